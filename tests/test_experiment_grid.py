"""experiment.grid: expansion of arms × sweeps × seeds, shared prerequisites, override checks."""

import collections

import pytest

from wmtp_jax.config import common as config_lib
from wmtp_jax.experiment import grid

FLOPS_PER_STEP = 1e9  # a stand-in for runner.mean_step_flops: no data is read


def _expand(variant, tmp_path, **changes):
  experiment = config_lib.load("experiment", variant)
  with experiment.unlocked():
    for key, value in changes.items():
      experiment[key] = value
  return grid.expand(experiment, tmp_path, lambda config: FLOPS_PER_STEP)


def _overrides(run) -> dict:
  return dict(run.overrides)


def test_default_grid_has_every_arm_and_seed_and_one_prerequisite_per_seed(tmp_path):
  """6 arms × 3 seeds; the four verifiable arms of a seed share one critic, rho1 has its
  reference: 6 prerequisites, listed first. Every arm gets the FLOPs of 200 verifiable steps."""
  runs = _expand("default", tmp_path)
  arms = [r for r in runs if r.arm]
  prerequisites = [r for r in runs if not r.arm]
  assert runs[:len(prerequisites)] == prerequisites
  assert len(arms) == 18 and {r.seed for r in arms} == {0, 1, 2}
  assert collections.Counter(r.arm for r in arms) == {a: 3 for a in (
      "baseline", "verifiable", "verifiable+shuffled", "verifiable+random_matched",
      "verifiable+oracle", "rho1")}
  assert sorted(r.name.split("/")[2].split("-")[0] for r in prerequisites) == (
      ["critic"] * 3 + ["reference"] * 3)
  for run in arms:
    o = _overrides(run)
    assert o["seed"] == run.seed and o["budget.flops"] == 200 * FLOPS_PER_STEP
    assert run.workdir(tmp_path) == tmp_path / run.arm / str(run.seed)
    for name in run.needs:
      section = "critic" if "critic" in name else "reference"
      assert o[f"{section}.checkpoint"] == str(tmp_path / name / ("critic" if section == "critic"
                                                                   else "ref_tuning"))
  critics = {r.seed: r.needs for r in arms if r.arm.startswith("verifiable")}
  assert all(len(set(needs)) == 1 for needs in critics.values())
  assert len({n for needs in critics.values() for n in needs}) == 3
  for run in prerequisites:
    assert _overrides(run)["seed"] == run.seed


def test_commands_carry_every_override_as_a_flag(tmp_path):
  run = next(r for r in _expand("smoke", tmp_path) if r.arm == "verifiable+shuffled")
  command = run.command(tmp_path)
  assert command[1:3] == ["-m", "wmtp_jax.main"]
  assert command[3].endswith("configs/verifiable.py:tiny")
  assert f"--workdir={tmp_path / 'verifiable+shuffled' / '0'}" in command
  assert "--config.weighting.control=shuffled" in command
  assert "--config.data.bucket_lengths=(160,)" in command
  assert "--config.seed=0" in command
  assert grid.flag_value(True) == "True" and grid.flag_value([1, 2]) == "(1, 2)"


def test_equal_steps_without_flops_of(tmp_path):
  runs = _expand("smoke", tmp_path, budget=config_lib.CD(dict(steps=7, flops_of="")))
  assert all(_overrides(r)["train.steps"] == 7 for r in runs if r.arm)


def test_ablation_sweeps_one_axis_at_a_time_without_duplicates(tmp_path):
  """β and λ sweep verifiable only (baseline has no weighting section), the horizon both arms;
  a value equal to another variant's config (λ = 0.95, the default, = β = 1.0) is dropped."""
  runs = [r for r in _expand("ablation", tmp_path) if r.arm and r.seed == 0]
  assert sorted(r.arm for r in runs) == sorted([
      "baseline@train_heads=1", "baseline@train_heads=2", "baseline@train_heads=4",
      "verifiable@beta=0.5", "verifiable@beta=1.0", "verifiable@beta=2.0",
      "verifiable@lam=0.8", "verifiable@lam=1.0",
      "verifiable@train_heads=1", "verifiable@train_heads=2", "verifiable@train_heads=4"])
  by_arm = {r.arm: _overrides(r) for r in runs}
  assert by_arm["verifiable@beta=0.5"]["weighting.beta"] == 0.5
  assert by_arm["baseline@train_heads=2"]["model.train_heads"] == 2


@pytest.mark.parametrize("change, message", [
    (dict(arms=config_lib.CD({"baseline": config_lib.CD(dict(
        pipeline="baseline", options="", overrides=(("weighting.betta", 1.0),)))})),
     r"arm 'baseline': unknown config key 'weighting.betta'"),
    (dict(arms=config_lib.CD({"verifiable": config_lib.CD(dict(
        pipeline="verifiable", options="", overrides=(("weighting.betta", 1.0),)))})),
     r"arm 'verifiable': unknown config key 'weighting.betta' \(did you mean 'weighting.beta'"),
    (dict(sweeps=(("optim.lrr", (1e-3,)),)), r"sweep 'optim.lrr': no arm's config has this key"),
    (dict(budget=config_lib.CD(dict(steps=3, flops_of="critic"))),
     r"budget.flops_of='critic' is not an arm"),
    (dict(overrides=(("train.steps", "many"),)), r"override train.steps='many'"),
])
def test_bad_experiment_configs_fail_before_anything_runs(change, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    _expand("smoke", tmp_path, **change)
  assert not any(tmp_path.iterdir())
