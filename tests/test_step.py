"""The train step: every pipeline overfits a batch, objectives' equivalences, gradient
accumulation, non-finite steps skipped, LoRA trains only the adapters, train_heads, the weighted
policies' diagnostics, mean-1 renormalisation and control weights."""

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from train_helpers import build_run, overfit_losses, step_fn, with_prerequisites
from wmtp_jax import objectives
from wmtp_jax.training import lora, state as state_lib, step as step_lib


@pytest.mark.parametrize("pipeline", ["baseline", "critic", "verifiable", "rho1", "ref_tuning"])
def test_each_pipeline_overfits_a_fixed_batch(pipeline, small_dataset, tmp_path):
  config = tiny_config(pipeline, small_dataset)  # critic / reference freshly initialised
  _, losses = overfit_losses(config, tmp_path)
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < 0.8 * losses[0], losses


def test_all_ones_weights_equal_baseline(small_dataset, tmp_path):
  base_cfg = tiny_config("baseline", small_dataset)
  state, frozen, context, batches = build_run(base_cfg, tmp_path)
  _, base_metrics = step_fn(context, frozen, base_cfg)(state, batches[0])

  # Critic and reference freshly initialised: the weights do not depend on them here.
  ver_cfg = tiny_config("verifiable", small_dataset)
  ver_cfg.weighting.min_weight = ver_cfg.weighting.max_weight = 1.0  # every weight clipped to 1
  rho_cfg = tiny_config("rho1", small_dataset)
  rho_cfg.rho1.k_percent = 1.0  # every valid term selected
  for cfg in (ver_cfg, rho_cfg):
    st, fr, ctx, bs = build_run(cfg, tmp_path)
    new_state, metrics = step_fn(ctx, fr, cfg)(st, bs[0])
    assert float(metrics["step_loss"]) == float(base_metrics["step_loss"])
    assert float(metrics["grad_norm"]) == float(base_metrics["grad_norm"])
    for key in ("error_rate_critical/head0", "error_rate_other/head1"):  # the same predictions
      assert float(metrics[key]) == float(base_metrics[key]), key


@pytest.mark.parametrize("pipeline", ["baseline", "verifiable"])
def test_gradient_accumulation_equals_one_large_batch(pipeline, small_dataset, tmp_path):
  config = tiny_config(pipeline, small_dataset)
  with_prerequisites(config, tmp_path)
  state, frozen, context, batches = build_run(config, tmp_path)
  one = jax.jit(lambda s, f, b: step_lib.loss_and_grads(context, s, f, b, 1))(
      state, frozen, batches[0])
  four = jax.jit(lambda s, f, b: step_lib.loss_and_grads(context, s, f, b, 4))(
      state, frozen, batches[0])
  np.testing.assert_allclose(four[0], one[0], rtol=1e-5, atol=1e-6)
  for g4, g1 in zip(jax.tree_util.tree_leaves(four[1]), jax.tree_util.tree_leaves(one[1])):
    np.testing.assert_allclose(g4, g1, rtol=1e-4, atol=1e-6)
  if pipeline == "verifiable":  # the EMA update sees the moments of the whole batch
    for a, b in zip(jax.tree_util.tree_leaves(four[3]), jax.tree_util.tree_leaves(one[3])):
      np.testing.assert_allclose(a, b, rtol=1e-5)


def test_nonfinite_step_is_skipped_and_counted(small_dataset, tmp_path):
  config = tiny_config("baseline", small_dataset)
  state, frozen, context, batches = build_run(config, tmp_path)
  before = jax.device_get(state.trainable)
  leaf = ("params", "norm", "weight")
  flat = flax.traverse_util.flatten_dict(state.trainable)
  flat[leaf] = flat[leaf].at[0].set(jnp.nan)
  bad = state.replace(trainable={**flax.traverse_util.unflatten_dict(flat), "lora": {}})
  new_state, metrics = step_fn(context, frozen, config)(bad, batches[0])
  assert int(metrics["skipped_steps"]) == 1 and int(metrics["nonfinite_streak"]) == 1
  assert int(new_state.step) == 1
  after = flax.traverse_util.flatten_dict(jax.device_get(new_state.trainable))
  for path, value in flax.traverse_util.flatten_dict(before).items():
    if path != leaf:
      np.testing.assert_array_equal(after[path], value)  # no update applied


def test_lora_trains_only_adapters_and_merges(small_dataset, tmp_path):
  config = tiny_config("baseline", small_dataset)
  config.lora.enabled = True
  config.lora.settings.rank = 4
  config.lora.settings.targets = ("q", "v", "down")
  config.train.trainable = "norm/.*"  # plus one base parameter group that trains
  state, frozen, context, batches = build_run(config, tmp_path)
  frozen_before = jax.device_get(frozen.base)
  step = step_fn(context, frozen, config)
  for _ in range(3):
    state, _ = step(state, batches[0])
  for after, before in zip(jax.tree_util.tree_leaves(jax.device_get(frozen.base)),
                           jax.tree_util.tree_leaves(frozen_before)):
    np.testing.assert_array_equal(after, before)
  assert set(state.trainable["params"]) == {"norm"}
  assert any(np.abs(np.asarray(b)).sum() > 0
             for b in jax.tree_util.tree_leaves(state.trainable["lora"]))
  params = state_lib.full_params(state.trainable, frozen.base)
  tokens, mask = batches[0]["tokens"], batches[0]["attention_mask"]
  with lora.applied(state.trainable["lora"], context.lora_cfg):
    adapted = context.objective.model.apply({"params": params}, tokens, mask)
  merged = context.objective.model.apply(
      {"params": lora.merge(params, state.trainable["lora"], context.lora_cfg)}, tokens, mask)
  np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)
  opt_leaves = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
  n_trainable = sum(x.size for x in jax.tree_util.tree_leaves(state.trainable))
  n_all = n_trainable + sum(x.size for x in jax.tree_util.tree_leaves(frozen.base))
  assert opt_leaves < 3 * n_trainable + 16 < n_all  # Adam moments for the trainable part only


def test_train_heads_trains_only_the_first_heads(small_dataset, tmp_path):
  config = tiny_config("baseline", small_dataset)  # n_future_tokens = 2
  config.model.train_heads = 1
  state, frozen, context, batches = build_run(config, tmp_path)
  loss, grads, metrics, _ = jax.jit(lambda s, f, b: step_lib.loss_and_grads(context, s, f, b, 1))(
      state, frozen, batches[0])
  assert metrics["per_head"].shape == (1,)
  params = grads["params"]
  assert all(np.all(np.asarray(g) == 0.0) for g in jax.tree_util.tree_leaves(params["head_1"]))
  assert all(np.any(np.asarray(g) != 0.0) for g in jax.tree_util.tree_leaves(params["head_0"]))
  config.model.train_heads = 3
  with pytest.raises(ValueError, match=r"config\.model\.train_heads"):
    objectives.build(config)


def test_weighted_step_logs_policy_diagnostics(small_dataset, tmp_path):
  config = tiny_config("verifiable", small_dataset)  # critic freshly initialised
  config.data.samples = "all"  # incorrect samples too: the lift on mutated targets
  state, frozen, context, batches = build_run(config, tmp_path)
  assert "critical_mask" in batches[0] and "mutated_mask" in batches[0]  # reach the objective
  step = jax.jit(functools.partial(step_lib.train_step, context, 1, grad_clip=1e-3))
  _, metrics = step(state, frozen, batches[0])
  for name in ("weight_lift_critical", "weight_lift_mutated", "weight_entropy",
               "weight_clipped_min", "weight_clipped_max", "error_rate_critical/head0",
               "error_rate_other/head1"):
    assert np.isfinite(float(metrics[name])), name
  assert 0.0 < float(metrics["error_rate_other/head1"]) <= 1.0  # an untrained policy errs
  assert float(metrics["grad_norm"]) > 1e-3  # clipped: the norm after clipping is the bound
  np.testing.assert_allclose(float(metrics["grad_norm_clipped"]), 1e-3, rtol=1e-6)


def test_mean1_rescales_the_whole_step(small_dataset, tmp_path):
  config = tiny_config("verifiable", small_dataset)
  state, frozen, context, batches = build_run(config, tmp_path)
  grads_of = lambda ctx, n: jax.jit(lambda s, f, b: step_lib.loss_and_grads(ctx, s, f, b, n))(
      state, frozen, batches[0])
  plain = grads_of(context, 1)
  config.weighting.renormalize = "mean1"
  context = dataclasses.replace(context, objective=objectives.build(config))
  one, two = grads_of(context, 1), grads_of(context, 2)
  # The weights' mean over the step's valid terms times the scale is 1.
  np.testing.assert_allclose(one[2]["weight_mean"] * one[2]["weight_scale"], 1.0, rtol=1e-5)
  np.testing.assert_allclose(one[0], plain[0] / plain[2]["weight_mean"], rtol=1e-5)
  np.testing.assert_allclose(two[0], one[0], rtol=1e-5)  # grad_accum=2 equals grad_accum=1
  np.testing.assert_allclose(two[2]["weight_scale"], one[2]["weight_scale"], rtol=1e-5)
  for g2, g1 in zip(jax.tree_util.tree_leaves(two[1]), jax.tree_util.tree_leaves(one[1])):
    np.testing.assert_allclose(g2, g1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pipeline,control", [("rho1", "random_matched"),
                                              ("verifiable", "oracle"),
                                              ("verifiable:softmax_heads", "shuffled")])
def test_control_weights_train(pipeline, control, small_dataset, tmp_path):
  config = tiny_config(pipeline, small_dataset)
  config.weighting.control = control
  state, frozen, context, batches = build_run(config, tmp_path)
  step = step_fn(context, frozen, config)
  for batch in batches:
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["step_loss"])) and int(metrics["skipped_steps"]) == 0
  if control == "random_matched":  # the running moments of rho1's own weights, in the state
    assert int(state.aux["control_ema"].count) == 2
    assert 0.0 < float(state.aux["control_ema"].mean) < 1.0
