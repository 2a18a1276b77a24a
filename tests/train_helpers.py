"""Helpers of the training tests: a run's state and first batches, a jitted step, the losses of
overfitting one batch, trained prerequisites, the losses a run logged."""

import functools
import json
import pathlib

import jax

from wmtp_jax import main as main_lib, objectives
from wmtp_jax.data import run_data
from wmtp_jax.training import mesh as mesh_lib, state as state_lib, step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def build_run(config, tmp_path, *, steps=None):
  """``(state, frozen, context, batches)`` with the first batches of the run's data."""
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  data = run_data.build(config, objective, tmp_path)
  state, frozen, context, _ = state_lib.build_state(config, objective, mesh, rules,
                                                    steps or config.train.steps)
  it = iter(data.train)
  batches = [data.to_global(next(it), context.batch_sharding) for _ in range(2)]
  return state, frozen, context, batches


def step_fn(context, frozen, config):
  """``step(state, batch)``: the jitted train step, ``frozen`` passed as its argument."""
  step = jax.jit(functools.partial(step_lib.train_step, context, config.train.grad_accum))
  return lambda state, batch: step(state, frozen, batch)


def overfit_losses(config, tmp_path, *, steps=20):
  """``step_loss`` of ``steps`` train steps on the run's first batch, from no warm-up at lr 1e-2
  (allowed to overfit)."""
  config.optim.warmup_steps = 0
  config.optim.lr = 1e-2
  state, frozen, context, batches = build_run(config, tmp_path, steps=30)
  step = step_fn(context, frozen, config)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batches[0])
    losses.append(float(metrics["step_loss"]))
  return context, losses


def with_prerequisites(config, tmp_path):
  """Train the critic / reference ``config`` needs for 2 steps and point it at them."""
  for name in ("critic", "reference"):
    if name in config:
      config[name].run.train.steps = 2
  main_lib.train_prerequisites(config, tmp_path)
  return config


def run_losses(workdir: pathlib.Path) -> dict[int, float]:
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["step_loss"] for r in rows if "step_loss" in r}
