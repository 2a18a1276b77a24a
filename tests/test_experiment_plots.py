"""experiment.plots: the seed band of a learning curve, against a loop; the figures are drawn."""

import numpy as np

from experiment_runs import write_run
from wmtp_jax.config import common as config_lib
from wmtp_jax.experiment import grid, plots, runfiles


def test_curve_is_the_mean_and_range_over_seeds_at_each_step(tmp_path):
  runs = [r for r in grid.expand(config_lib.load("experiment", "smoke"), tmp_path,
                                 lambda config: 1.0) if r.arm == "verifiable"]
  for run in runs:
    write_run(run, tmp_path)
  files = [runfiles.read(r, tmp_path) for r in runs]
  x, mean, low, high = plots.curve(files, "eval_pass_at_1")
  for i, step in enumerate((1, 2, 3, 4)):
    values = [row["eval_pass_at_1"] for f in files for row in f.rows if row["step"] == step]
    assert x[i] == 1e9 * step
    assert np.isclose(mean[i], sum(values) / len(values)) and (low[i], high[i]) == (
        min(values), max(values))
  assert plots.curve(files, "never_logged") is None
  paths = plots.draw({"verifiable": files}, tmp_path / "figures")
  assert [p.name for p in paths] == ["curves.png", "weights.png", "stability.png"]
