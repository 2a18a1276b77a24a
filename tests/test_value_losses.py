"""Tests for wmtp_jax.losses.value (critic / value losses) against plain Python loops."""

import jax
import numpy as np
import pytest
from error_match import raises

from wmtp_jax.losses import (clipped_value_loss, lambda_return_value_loss, mc_value_loss,
                             pairwise_ranking_loss)

SIMPLE = dict(rtol=1e-5, atol=1e-5)


def _critic_batch(rng, batch=5, seq_len=6):
  values = rng.normal(size=(batch, seq_len)).astype(np.float32)
  mask = (rng.uniform(size=(batch, seq_len)) < 0.7).astype(np.float32)
  mask[1] = 0.0  # a row with no valid token
  values[1] = 1e30  # garbage there must reach neither the value nor the gradient
  return values, mask


def test_critic_bad_inputs():
  values = np.zeros((2, 5), np.float32)
  raises(["mask shape (2, 4)", "values shape (2, 5)"], lambda_return_value_loss, values, values,
         np.ones((2, 4)))
  raises(["targets shape (2, 6)", "values shape (2, 5)"], lambda_return_value_loss, values,
         np.zeros((2, 6)), np.ones((2, 5)))
  raises(["mask shape (3, 5)", "values shape (2, 5)"], mc_value_loss, values, np.zeros(2),
         np.ones((3, 5)))
  raises(["rewards shape (3,)", "values shape (2, 5)"], mc_value_loss, values, np.zeros(3),
         np.ones((2, 5)))
  raises(["returns shape (2, 4)", "values shape (2, 5)"], clipped_value_loss, values, values,
         np.zeros((2, 4)), np.ones((2, 5)))
  raises(["mask_neg shape (2, 3)", "values_neg shape (2, 4)"], pairwise_ranking_loss, values,
         np.ones((2, 5)), np.zeros((2, 4)), np.ones((2, 3)))
  raises(["values_pos shape (2, 5)", "values_neg shape (3, 4)"], pairwise_ranking_loss, values,
         np.ones((2, 5)), np.zeros((3, 4)), np.ones((3, 4)))
  with pytest.raises(ValueError, match="kind"):
    lambda_return_value_loss(values, values, np.ones((2, 5)), kind="l1")


def test_pairwise_ranking_loss_matches_loop():
  rng = np.random.default_rng(8)
  values_pos, mask_pos = _critic_batch(rng, seq_len=6)
  values_neg, mask_neg = _critic_batch(rng, seq_len=4)
  out = jax.jit(pairwise_ranking_loss)(values_pos, mask_pos, values_neg, mask_neg)
  losses, wins = [], []
  for b in range(values_pos.shape[0]):
    mean_pos = (sum(float(values_pos[b, t]) for t in range(6) if mask_pos[b, t])
                / (mask_pos[b].sum() + 1e-8))
    mean_neg = (sum(float(values_neg[b, t]) for t in range(4) if mask_neg[b, t])
                / (mask_neg[b].sum() + 1e-8))
    losses.append(-np.log(1.0 / (1.0 + np.exp(-(mean_pos - mean_neg)))))
    wins.append(float(mean_pos > mean_neg))
  np.testing.assert_allclose(out["loss"], np.mean(losses), **SIMPLE)
  np.testing.assert_allclose(out["accuracy"], np.mean(wins), **SIMPLE)
  big = pairwise_ranking_loss(np.full((1, 2), 200.0), np.ones((1, 2)), np.zeros((1, 2)),
                              np.ones((1, 2)))
  assert np.isfinite(big["loss"]) and float(big["loss"]) < 1e-6  # log_sigmoid is stable


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_lambda_return_value_loss_matches_loop(kind):
  """Per-sequence mean, then the mean over sequences with a token (the reference's)."""
  rng = np.random.default_rng(9)
  values, mask = _critic_batch(rng)
  targets = rng.normal(size=values.shape).astype(np.float32)
  delta = 0.5
  rows = []
  for b in range(values.shape[0]):
    total, count = 0.0, 0
    for t in range(values.shape[1]):
      if mask[b, t]:
        e = float(values[b, t]) - float(targets[b, t])
        if kind == "mse":
          total += e * e
        else:  # torch.nn.functional.smooth_l1_loss(beta=delta), written out
          total += 0.5 * e * e / delta if abs(e) < delta else abs(e) - 0.5 * delta
        count += 1
    if count:
      rows.append(total / count)
  fn = jax.jit(lambda v, g, m: lambda_return_value_loss(v, g, m, kind=kind, huber_delta=delta))
  np.testing.assert_allclose(fn(values, targets, mask), np.mean(rows), **SIMPLE)
  grad_targets = jax.grad(fn, argnums=1)(values, targets, mask)
  assert np.all(np.asarray(grad_targets) == 0.0)
  assert float(fn(values, targets, np.zeros_like(mask))) == 0.0


def test_lambda_return_value_loss_huber_is_torch_smooth_l1():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(12)
  values = rng.normal(size=(3, 7)).astype(np.float32)
  targets = rng.normal(size=(3, 7)).astype(np.float32)
  mask = np.ones((3, 7), np.float32)
  for delta in (0.25, 0.5, 2.0):
    ours = lambda_return_value_loss(values, targets, mask, kind="huber", huber_delta=delta)
    ref = torch.nn.functional.smooth_l1_loss(torch.from_numpy(values), torch.from_numpy(targets),
                                             beta=delta)  # equal rows: the token mean
    np.testing.assert_allclose(ours, ref.item(), **SIMPLE)
  with pytest.raises(ValueError, match="huber_delta"):
    lambda_return_value_loss(values, targets, mask, kind="huber", huber_delta=0.0)


def test_mc_value_loss_matches_loop():
  rng = np.random.default_rng(10)
  values, mask = _critic_batch(rng)
  rewards = rng.integers(0, 2, size=values.shape[0]).astype(np.float32)
  rows = []
  for b in range(values.shape[0]):
    terms = [(values[b, t] - rewards[b])**2 for t in range(values.shape[1]) if mask[b, t]]
    if terms:
      rows.append(np.mean(terms))
  np.testing.assert_allclose(jax.jit(mc_value_loss)(values, rewards, mask), np.mean(rows),
                             **SIMPLE)
  assert float(mc_value_loss(values, rewards, np.zeros_like(mask))) == 0.0


def test_clipped_value_loss_matches_loop():
  rng = np.random.default_rng(11)
  values, mask = _critic_batch(rng)
  old_values = (values + rng.normal(scale=0.3, size=values.shape)).astype(np.float32)
  returns = rng.normal(size=values.shape).astype(np.float32)
  clip = 0.2
  total, count = 0.0, 0.0
  for b in range(values.shape[0]):
    for t in range(values.shape[1]):
      if mask[b, t]:
        v, old, g = float(values[b, t]), float(old_values[b, t]), float(returns[b, t])
        clipped = old + min(max(v - old, -clip), clip)
        total += max((v - g)**2, (clipped - g)**2)
        count += 1
  fn = jax.jit(lambda v, o, g, m: clipped_value_loss(v, o, g, m, clip_range=clip))
  np.testing.assert_allclose(fn(values, old_values, returns, mask), 0.5 * total / count, **SIMPLE)
  grads = jax.grad(fn, argnums=(0, 1, 2))(values, old_values, returns, mask)
  assert np.all(np.asarray(grads[1]) == 0.0) and np.all(np.asarray(grads[2]) == 0.0)
  assert np.isfinite(np.asarray(grads[0])).all()
