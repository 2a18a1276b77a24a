"""experiment.report / runfiles / plots: the report from run files written here as the jobs
write them (report.json, metrics.jsonl, eval/problems.jsonl, tensorboard histograms)."""

import json
import math

import numpy as np
import pytest
import tensorboardX

from wmtp_jax.config import common as config_lib
from wmtp_jax.experiment import grid, report, runfiles, stats

PROBLEMS = [f"p{i}" for i in range(6)]


def _pass_at_k(n, c, k):
  return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _correct(run, problem: int) -> int:
  """Passing samples (of 4) of a run on a problem: verifiable does better on odd problems."""
  return (problem + run.seed) % 3 + (1 if run.arm == "verifiable" and problem % 2 else 0)


def _write_run(run, root, status="finished", error=None):
  workdir = run.workdir(root)
  phase = workdir / run.pipeline
  phase.mkdir(parents=True)
  rows = [{"step": s, "phase": run.pipeline, "flops/train_cumulative": 1e9 * s,
           "grad_norm": 30.0 if s == 3 else 1.0, "eval_pass_at_1": 0.1 * s + 0.01 * run.seed,
           "val_unweighted": 2.0 - 0.1 * s} for s in (1, 2, 3, 4)]
  phase.joinpath("metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  problems = [{"model": model, "seed": run.seed, "problem_id": p, "n": 4,
               "correct": {"0.8": _correct(run, i)}, "greedy_passed": i % 2 == 0}
              for model in ("base", "finetuned") for i, p in enumerate(PROBLEMS)]
  (phase / "eval").mkdir()
  (phase / "eval" / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in problems))
  writer = tensorboardX.SummaryWriter(str(phase / "tb"))
  for step, counts in ((2, [5, 1, 0]), (4, [1, 2, 3])):
    writer.add_histogram_raw(f"{run.pipeline}/weight_histogram", min=0.0, max=3.0, num=6,
                             sum=1.0, sum_squares=1.0, bucket_limits=[1.0, 2.0, 3.0],
                             bucket_counts=counts, global_step=step)
  writer.close()
  finetuned = {"pass@1": np.mean([_correct(run, i) / 4 for i in range(6)]), "temperature": 0.8,
               "by_temperature": {"0.8": {"pass@1": 0.5}}, "prompt_mode": "finetuned"}
  body = {"status": status, run.pipeline: {"metrics": {"flops/train_cumulative": 4e9,
                                                       "val_unweighted": 1.6 + 0.01 * run.seed}},
          "evaluation": {"base": {"pass@1": 0.1}, "finetuned": finetuned}}
  if error:
    body["error"] = error
  (workdir / "report.json").write_text(json.dumps(body))


def test_report_from_run_files(tmp_path):
  experiment = config_lib.load("experiment", "smoke")
  runs = grid.expand(experiment, tmp_path, lambda config: 1.0)
  for run in runs:
    if run.name == "verifiable+shuffled/1":
      _write_run(run, tmp_path, status="failed", error="FloatingPointError: boom")
    elif run.name != "verifiable+shuffled/0":  # not started
      _write_run(run, tmp_path)
  path = report.write(experiment, runs, tmp_path)
  text = path.read_text()
  assert "| verifiable+shuffled/1 | **crashed**: FloatingPointError: boom |" in text
  assert "[log.txt](verifiable+shuffled/1/log.txt)" in text
  assert "| verifiable+shuffled/0 | not started |" in text

  # Paired difference, by hand: unbiased pass@1 per problem and seed, verifiable − baseline.
  by_name = {r.name: r for r in runs}
  scores = lambda arm: np.array([[_pass_at_k(4, _correct(by_name[f"{arm}/{s}"], i), 1)
                                  for s in (0, 1)] for i in range(6)])
  expected = stats.paired_bootstrap(scores("verifiable"), scores("baseline"), samples=200)
  assert expected["diff"] == pytest.approx(0.25 * 3 / 6)
  assert (f"| verifiable | pass@1 | {expected['diff']:+.4f} | [{expected['low']:+.4f}, "
          f"{expected['high']:+.4f}] | {expected['p']:.3g} | 6 × 2 |") in text
  assert "| verifiable | greedy_pass@1 | +0.0000 |" in text
  assert "| verifiable+shuffled | pass@1 | — | no paired per-problem results |" in text

  # Per arm: mean ± CI over the finished seeds.
  mean, half, n = stats.mean_ci([1.6, 1.61])
  assert f"| train/val_unweighted | {report.fmt(mean, half, n)} |" in text
  # Stability: one spike (30 > 3 × median 1) per run.
  assert "| baseline | " in text and "| 1 | 1 |" in text
  # Frozen models' own training FLOPs.
  assert text.count("| finished | 4e+09 |") == 2
  for name in ("curves", "weights", "stability"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert f"![{name}]({name}.png)" in text

  # Regenerated from the files alone: the same report (but its time stamp).
  for png in tmp_path.glob("*.png"):
    png.unlink()
  path.unlink()
  again = report.write(experiment, runs, tmp_path).read_text()
  strip = lambda t: [line for line in t.splitlines() if not line.startswith("Generated")]
  assert strip(again) == strip(text)


def test_run_files_read_the_last_histogram_and_problem_scores(tmp_path):
  run = next(r for r in grid.expand(config_lib.load("experiment", "smoke"), tmp_path,
                                    lambda config: 1.0) if r.arm == "verifiable")
  _write_run(run, tmp_path)
  files = runfiles.read(run, tmp_path)
  limits, counts = files.histogram
  assert limits.tolist() == [1.0, 2.0, 3.0] and counts.tolist() == [1, 2, 3]
  assert files.metrics["finetuned/by_temperature/0.8/pass@1"] == 0.5
  assert "finetuned/prompt_mode" not in files.metrics
  assert files.status == "finished" and files.temperature == 0.8
  assert runfiles.problem_scores(files, "pass@2") == pytest.approx({
      p: _pass_at_k(4, _correct(run, i), 2) for i, p in enumerate(PROBLEMS)}, abs=1e-12)
  assert runfiles.problem_scores(files, "pass@5") == {}  # k above the 4 samples
  assert runfiles.problem_scores(files, "greedy_pass@1") == {
      p: float(i % 2 == 0) for i, p in enumerate(PROBLEMS)}
  assert runfiles.last_histogram(tmp_path / "none", "x") is None
