"""Dispatch ``python -m wmtp_jax.bench NAME [flags]`` to ``wmtp_jax.bench.NAME.main``."""

import importlib
import json
import pkgutil
import sys

import wmtp_jax.bench as bench_pkg


def _available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__)
                if not m.name.startswith("_"))


def main(argv: list[str]) -> None:
  names = _available()
  if not argv or argv[0] not in names:
    given = argv[0] if argv else "(none)"
    sys.exit(f"usage: python -m wmtp_jax.bench {{{','.join(names)}}} [flags]; got {given!r}")
  result = importlib.import_module(f"wmtp_jax.bench.{argv[0]}").main(argv[1:])
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main(sys.argv[1:])
