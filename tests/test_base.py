"""Tests for wmtp_jax.objectives.base: the weighted policies' controls, mean-1 step rescale and
span error rates (the weighting functions themselves: tests/test_controls.py)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wmtp_jax import IGNORE_INDEX, weighting
from wmtp_jax.objectives import base


def _cfg(control="none", renormalize="none"):
  return ml_collections.ConfigDict(dict(control=control, renormalize=renormalize))


def _ema(mean, std, count):
  return weighting.EMAStats(mean=jnp.float32(mean), std=jnp.float32(std), count=jnp.int32(count))


def test_random_matched_draws_with_the_running_moments_after_the_first_step():
  rng = np.random.default_rng(0)
  mask = (rng.uniform(size=(64, 400)) < 0.7).astype(np.int32)
  w = np.where(mask != 0, rng.uniform(0.4, 0.6, mask.shape), 0.0).astype(np.float32)  # mean 0.5
  key = jax.random.key(0)
  kwargs = dict(mask_BxS=mask, batch={}, rng=key, low=0.0, high=10.0)
  first, sums = base.controlled_weights(_cfg("random_matched"), w, aux={"control_ema": _ema(
      0.0, 1.0, 0)}, **kwargs)
  later, _ = base.controlled_weights(_cfg("random_matched"), w, aux={"control_ema": _ema(
      2.0, 0.2, 3)}, **kwargs)
  first, later = np.asarray(first), np.asarray(later)
  # 17.9k draws each: the standard errors of the means are < 0.002; tolerances are ≥ 10 SE.
  np.testing.assert_allclose(first[mask != 0].mean(), 0.5, rtol=0.05)  # the step's own moments
  np.testing.assert_allclose(later[mask != 0].mean(), 2.0, rtol=0.01)  # the EMA's
  np.testing.assert_allclose(later[mask != 0].std(), 0.2, rtol=0.05)
  assert np.all(first[mask == 0] == 0.0) and np.all(later[mask == 0] == 0.0)
  assert int(sums["control_moments"].count) == int(mask.sum())
  new = base.update_control_aux(_cfg("random_matched"), {"control_ema": _ema(0.0, 1.0, 0)}, sums)
  np.testing.assert_allclose(new["control_ema"].mean, w[mask != 0].mean(), rtol=1e-5)


def test_oracle_needs_spans_and_none_is_the_identity():
  mask = np.ones((2, 5), np.int32)
  w = np.full((2, 5), 1.5, np.float32)
  kwargs = dict(mask_BxS=mask, aux={}, rng=jax.random.key(0), low=0.1, high=3.0)
  with pytest.raises(ValueError, match="control='oracle'.*critical_mask"):
    base.controlled_weights(_cfg("oracle"), w, batch={}, **kwargs)
  critical = np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
  oracle, _ = base.controlled_weights(_cfg("oracle"), w, batch={"critical_mask": critical},
                                      **kwargs)
  np.testing.assert_allclose(np.asarray(oracle).mean(), 1.5, rtol=1e-6)
  assert np.argmax(np.asarray(oracle)) == 1
  same, sums = base.controlled_weights(_cfg(), w, batch={}, **kwargs)
  assert same is w and sums == {}


def test_mean_one_scales_loss_grads_and_weighted_metrics():
  valid = np.array([[[True, True], [True, False]]])
  w = np.array([[[0.5, 1.0], [1.5, 9.0]]], np.float32)  # mean 1 over the 3 valid terms
  sums = base.weight_sums(w * 0.5, valid)
  grads = {"a": jnp.ones(3), "b": {"c": jnp.full((2,), 2.0)}}
  metrics = {"loss": jnp.float32(3.0), "per_head": jnp.array([1.0, 2.0]), "unweighted": 4.0}
  loss, new_grads, new_metrics = base.mean_one(_cfg(renormalize="mean1"), jnp.float32(3.0), grads,
                                               metrics, sums)
  np.testing.assert_allclose(new_metrics["weight_scale"], 2.0, rtol=1e-6)  # 3 terms, Σw = 1.5
  np.testing.assert_allclose(loss, 6.0, rtol=1e-6)
  np.testing.assert_allclose(new_grads["b"]["c"], [4.0, 4.0], rtol=1e-6)
  np.testing.assert_allclose(new_metrics["per_head"], [2.0, 4.0], rtol=1e-6)
  assert new_metrics["unweighted"] == 4.0
  unchanged = base.mean_one(_cfg(), jnp.float32(3.0), grads, metrics, sums)
  assert unchanged[1] is grads and unchanged[2] is metrics
  with pytest.raises(ValueError, match="renormalize='mean1'.*shared_head"):
    base.check_weighting(_cfg(renormalize="mean1"), shared_head=True)


def test_span_error_rates_by_loop():
  rng = np.random.default_rng(1)
  b, s, n = 3, 9, 2
  labels = rng.integers(0, 5, (b, s)).astype(np.int32)
  labels[:, :3] = IGNORE_INDEX
  attention = np.ones((b, s), np.int32)
  attention[2, 7:] = 0
  labels[2, 7:] = IGNORE_INDEX
  critical = (rng.uniform(size=(b, s)) < 0.4).astype(np.int32)
  predictions = rng.integers(0, 5, (b, s, n)).astype(np.int32)
  batch = {"labels": labels, "attention_mask": attention, "critical_mask": critical}
  rates = base.span_error_rates(predictions, batch)
  for k in range(n):
    wrong = {True: [], False: []}
    for row in range(b):
      for t in range(s):
        j = t + 1 + k
        if j < s and labels[row, j] != IGNORE_INDEX and attention[row, j]:
          wrong[bool(critical[row, j])].append(predictions[row, t, k] != labels[row, j])
    np.testing.assert_allclose(rates[f"error_rate_critical/head{k}"], np.mean(wrong[True]),
                               rtol=1e-6)
    np.testing.assert_allclose(rates[f"error_rate_other/head{k}"], np.mean(wrong[False]),
                               rtol=1e-6)
  assert base.span_error_rates(predictions, {"labels": labels}) == {}
