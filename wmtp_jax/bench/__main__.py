"""Dispatch ``python -m wmtp_jax.bench NAME [flags]`` to ``wmtp_jax.bench.NAME.main``.

``python -m wmtp_jax.bench --help`` lists the benchmarks (exit 0); ``NAME --help`` shows the flags
of one. A missing or unknown name is a usage error (exit 1).
"""

import ast
import importlib
import importlib.util
import json
import pkgutil
import re
import sys

import wmtp_jax.bench as bench_pkg


def _available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__)
                if not m.name.startswith("_"))


def _summary(name: str) -> str:
  """The first sentence of benchmark ``name``'s docstring, read without importing it."""
  source = importlib.util.find_spec(f"wmtp_jax.bench.{name}").origin
  with open(source, encoding="utf-8") as f:
    docstring = ast.get_docstring(ast.parse(f.read())) or ""
  return re.split(r"(?<=\.)\s", " ".join(docstring.split("\n\n", 1)[0].split()), maxsplit=1)[0]


def _usage(names: list[str]) -> str:
  return f"usage: python -m wmtp_jax.bench {{{','.join(names)}}} [flags]"


def main(argv: list[str]) -> None:
  names = _available()
  if argv[:1] in (["-h"], ["--help"]):
    width = max(map(len, names))
    print("\n".join([_usage(names), "", "Runs one benchmark and prints its JSON report.", "",
                     "benchmarks:", *(f"  {n:<{width}}  {_summary(n)}" for n in names), "",
                     "python -m wmtp_jax.bench NAME --help shows the flags of one."]))
    return
  if not argv or argv[0] not in names:
    given = argv[0] if argv else "(none)"
    print(f"{_usage(names)}; got {given!r} (--help lists them)", file=sys.stderr)
    sys.exit(1)
  result = importlib.import_module(f"wmtp_jax.bench.{argv[0]}").main(argv[1:])
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main(sys.argv[1:])
