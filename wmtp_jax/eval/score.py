"""Score completions produced by any model: ``python -m wmtp_jax.eval.score``.

    python -m wmtp_jax.eval.score --benchmark {humaneval,mbpp,codecontests,gsm8k,synthetic} \\
        --samples FILE.jsonl [--data PATH] [--split all] --out DIR [--ks 1,5,10] \\
        [--workers N] [--timeout-s 10] [--memory-mb 1024] [--completion-mode continue|program]

``FILE.jsonl`` holds ``{"task_id", "completion"}`` lines, several per task allowed. For HumanEval a
completion continues the prompt; for MBPP and CodeContests it is the whole program; for GSM8K it is
the answer text (the number after the last ``####``, else the last number). Task ids are the
problems' ids (``HumanEval/0``, ``mbpp/11`` or ``11``, a CodeContests name, ``gsm8k/test/7`` or
``7``); an unknown id is an error naming it. The problems are looked up in every split unless
``--split`` says otherwise.

Writes, as the ``evaluate`` pipeline does, ``DIR/samples.jsonl`` (per sample: task id, completion,
passed, result), ``DIR/results.jsonl`` (per problem: n, c, pass@k) and ``DIR/summary.json``
(``pass@k`` for every k ≤ the smallest number of samples per task, ``n_problems``, ``n_samples``;
``accuracy`` for GSM8K). The summary is written only after every sample was scored.
"""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from wmtp_jax.data import jsonl, schema
from wmtp_jax.eval import benchmarks, passk


def _read_samples(path: Path) -> list[dict]:
  samples = []
  for lineno, _, obj in jsonl.read_jsonl(path, validate=None).located():
    if not (isinstance(obj, dict) and "task_id" in obj and isinstance(obj.get("completion"), str)):
      raise schema.DataError(f"{path}:{lineno}: expected {{\"task_id\", \"completion\": str}}")
    samples.append(obj)
  if not samples:
    raise schema.DataError(f"{path}: no samples")
  return samples


def score_file(benchmark: str, samples_path: Path, out_dir: Path, *, data: str | None = None,
               split: str = "all", sanitized: bool = False, ks: Sequence[int] = passk.DEFAULT_KS,
               workers: int | None = None, timeout_s: float = 10.0, memory_mb: int = 1024,
               continues_prompt: bool | None = None,
               test_kinds: Sequence[str] | None = None) -> dict:
  """Scores ``samples_path`` and writes the result files into ``out_dir``; returns the summary."""
  bench = benchmarks.get(benchmark)
  problems = {p["problem_id"]: p for p in
              benchmarks.load_problems(benchmark, data, split=split, sanitized=sanitized)}
  samples = _read_samples(samples_path)
  task_ids = [benchmarks.resolve_task_id(s["task_id"], problems) for s in samples]
  continues = bench.continues_prompt if continues_prompt is None else continues_prompt
  verdicts = benchmarks.score([problems[t] for t in task_ids], [s["completion"] for s in samples],
                              continues_prompt=continues, workers=workers, timeout_s=timeout_s,
                              memory_mb=memory_mb, test_kinds=test_kinds)
  rows = [{"task_id": t, "completion": s["completion"], **v}
          for t, s, v in zip(task_ids, samples, verdicts)]
  scored = [problems[t] for t in dict.fromkeys(task_ids)]
  result = passk.summarize([p["problem_id"] for p in scored], rows, ks,
                           with_accuracy=any(benchmarks.kind_of(p) == "answer" for p in scored))
  summary = {"benchmark": benchmark, "samples": str(samples_path), **result["summary"]}
  out_dir.mkdir(parents=True, exist_ok=True)
  jsonl.write_jsonl(out_dir / "samples.jsonl", rows, validate=None)
  jsonl.write_jsonl(out_dir / "results.jsonl", result["per_problem"], validate=None)
  with jsonl.atomic_write(out_dir / "summary.json") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write("\n")
  return summary


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.eval.score",
                                   description=__doc__.split("\n", 1)[0])
  parser.add_argument("--benchmark", required=True, choices=sorted(benchmarks.BENCHMARKS))
  parser.add_argument("--samples", required=True, type=Path, help="JSONL of task_id, completion")
  parser.add_argument("--out", required=True, type=Path, help="output directory")
  parser.add_argument("--data", default=None, help="problems file or directory (see docstring)")
  parser.add_argument("--split", default="all", help="split to look task ids up in (default all)")
  parser.add_argument("--sanitized", action="store_true", help="MBPP: the sanitized subset")
  parser.add_argument("--ks", default=",".join(map(str, passk.DEFAULT_KS)))
  parser.add_argument("--workers", type=int, default=None)
  parser.add_argument("--timeout-s", type=float, default=10.0)
  parser.add_argument("--memory-mb", type=int, default=1024)
  parser.add_argument("--completion-mode", choices=("continue", "program"), default=None,
                      help="override: completions continue the prompt, or are whole programs")
  parser.add_argument("--test-kinds", default="",
                      help="CodeContests: comma-separated public,private,generated (default all)")
  args = parser.parse_args(argv)
  try:
    summary = score_file(
        args.benchmark, args.samples, args.out, data=args.data, split=args.split,
        sanitized=args.sanitized, ks=[int(k) for k in args.ks.split(",") if k],
        workers=args.workers, timeout_s=args.timeout_s, memory_mb=args.memory_mb,
        continues_prompt=None if args.completion_mode is None else
        args.completion_mode == "continue",
        test_kinds=[k for k in args.test_kinds.split(",") if k] or None)
  except (KeyError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) else e}")
  print(json.dumps(summary, indent=2))
  return summary


if __name__ == "__main__":
  main()
