"""experiment.runfiles: what the report reads from a run directory."""

import pytest

from experiment_runs import PROBLEMS, correct, pass_at_k, write_run
from wmtp_jax.config import common as config_lib
from wmtp_jax.experiment import grid, runfiles


def test_run_files_read_the_last_histogram_and_problem_scores(tmp_path):
  run = next(r for r in grid.expand(config_lib.load("experiment", "smoke"), tmp_path,
                                    lambda config: 1.0) if r.arm == "verifiable")
  write_run(run, tmp_path)
  files = runfiles.read(run, tmp_path)
  limits, counts = files.histogram
  assert limits.tolist() == [1.0, 2.0, 3.0] and counts.tolist() == [1, 2, 3]
  assert files.metrics["finetuned/by_temperature/0.8/pass@1"] == 0.5
  assert "finetuned/prompt_mode" not in files.metrics
  assert files.status == "finished" and files.temperature == 0.8
  assert runfiles.problem_scores(files, "pass@2") == pytest.approx({
      p: pass_at_k(4, correct(run, i), 2) for i, p in enumerate(PROBLEMS)}, abs=1e-12)
  assert runfiles.problem_scores(files, "pass@5") == {}  # k above the 4 samples
  assert runfiles.problem_scores(files, "greedy_pass@1") == {
      p: float(i % 2 == 0) for i, p in enumerate(PROBLEMS)}
  assert runfiles.last_histogram(tmp_path / "none", "x") is None
