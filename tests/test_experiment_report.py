"""experiment.report: report.md and its figures from run directories written here as the jobs
write them (``experiment_runs``)."""

import numpy as np
import pytest

from experiment_runs import correct, pass_at_k, write_run
from wmtp_jax.config import common as config_lib
from wmtp_jax.experiment import grid, report, stats


def test_report_from_run_files(tmp_path):
  experiment = config_lib.load("experiment", "smoke")
  runs = grid.expand(experiment, tmp_path, lambda config: 1.0)
  for run in runs:
    if run.name == "verifiable+shuffled/1":
      write_run(run, tmp_path, status="failed", error="FloatingPointError: boom")
    elif run.name != "verifiable+shuffled/0":  # not started
      write_run(run, tmp_path)
  path = report.write(experiment, runs, tmp_path)
  text = path.read_text()
  assert "| verifiable+shuffled/1 | **crashed**: FloatingPointError: boom |" in text
  assert "[log.txt](verifiable+shuffled/1/log.txt)" in text
  assert "| verifiable+shuffled/0 | not started |" in text

  # Paired difference, by hand: unbiased pass@1 per problem and seed, verifiable − baseline.
  by_name = {r.name: r for r in runs}
  scores = lambda arm: np.array([[pass_at_k(4, correct(by_name[f"{arm}/{s}"], i), 1)
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

