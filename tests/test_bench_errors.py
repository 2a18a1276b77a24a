"""The benchmark dispatcher ``python -m wmtp_jax.bench``: ``--help`` lists the benchmarks and says
how to get each one's flags (exit 0), ``NAME --help`` shows that benchmark's flags, and a missing
or unknown name is a usage error (exit 1)."""

import os
import subprocess
import sys

import pytest

from wmtp_jax.bench import __main__ as bench_main

NAMES = ("convert", "data", "decode", "loss", "scale", "step", "suite", "weighting")


def test_help_lists_the_benchmarks_and_exits_0():
  result = subprocess.run([sys.executable, "-m", "wmtp_jax.bench", "--help"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == f"usage: python -m wmtp_jax.bench {{{','.join(NAMES)}}} [flags]"
  for name in NAMES:
    assert any(line.split()[:1] == [name] and len(line.split()) > 1 for line in lines), name
  assert "python -m wmtp_jax.bench NAME --help" in result.stdout


@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_shows_its_flags(name, capsys):
  with pytest.raises(SystemExit) as info:
    bench_main.main([name, "--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith(f"usage: python -m wmtp_jax.bench {name}") and "--" in out


@pytest.mark.parametrize("argv", [[], ["nope"], ["-x"]])
def test_a_missing_or_unknown_benchmark_is_a_usage_error(argv, capsys):
  with pytest.raises(SystemExit) as info:
    bench_main.main(argv)
  assert info.value.code == 1
  assert "usage: python -m wmtp_jax.bench {convert," in capsys.readouterr().err
