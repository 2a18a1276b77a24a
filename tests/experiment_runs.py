"""Run directories written as ``wmtp_jax.main`` writes them (report.json, metrics.jsonl,
eval/problems.jsonl, tensorboard histograms), for the experiment report tests."""

import json
import math

import numpy as np
import tensorboardX

PROBLEMS = [f"p{i}" for i in range(6)]


def pass_at_k(n, c, k):
  return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def correct(run, problem: int) -> int:
  """Passing samples (of 4) of a run on a problem: verifiable does better on odd problems."""
  return (problem + run.seed) % 3 + (1 if run.arm == "verifiable" and problem % 2 else 0)


def write_run(run, root, status="finished", error=None):
  workdir = run.workdir(root)
  phase = workdir / run.pipeline
  phase.mkdir(parents=True)
  rows = [{"step": s, "phase": run.pipeline, "flops/train_cumulative": 1e9 * s,
           "grad_norm": 30.0 if s == 3 else 1.0, "eval_pass_at_1": 0.1 * s + 0.01 * run.seed,
           "val_unweighted": 2.0 - 0.1 * s} for s in (1, 2, 3, 4)]
  phase.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  problems = [{"model": model, "seed": run.seed, "problem_id": p, "n": 4,
               "correct": {"0.8": correct(run, i)}, "greedy_passed": i % 2 == 0}
              for model in ("base", "finetuned") for i, p in enumerate(PROBLEMS)]
  (phase / "eval").mkdir()
  (phase / "eval" / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems))
  writer = tensorboardX.SummaryWriter(str(phase / "tb"))
  for step, counts in ((2, [5, 1, 0]), (4, [1, 2, 3])):
    writer.add_histogram_raw(f"{run.pipeline}/weight_histogram", min=0.0, max=3.0, num=6,
                             sum=1.0, sum_squares=1.0, bucket_limits=[1.0, 2.0, 3.0],
                             bucket_counts=counts, global_step=step)
  writer.close()
  finetuned = {"pass@1": np.mean([correct(run, i) / 4 for i in range(6)]), "temperature": 0.8,
               "by_temperature": {"0.8": {"pass@1": 0.5}}, "prompt_mode": "finetuned"}
  body = {"status": status, run.pipeline: {"metrics": {"flops/train_cumulative": 4e9,
                                                       "val_unweighted": 1.6 + 0.01 * run.seed}},
          "evaluation": {"base": {"pass@1": 0.1}, "finetuned": finetuned}}
  if error:
    body["error"] = error
  (workdir / "report.json").write_text(json.dumps(body))
