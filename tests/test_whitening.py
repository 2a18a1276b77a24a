"""Parity tests for wmtp_jax.weighting.whitening (exponential weights, EMA statistics) against the
loop references of weighting_refs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from weighting_refs import COMPOSITE, SHAPES, SIMPLE, exp_weights_ref, make_case

from wmtp_jax import weighting as W


def ema_ref(batches, momentum, warmup):
  mean, std, count = 0.0, 1.0, 0
  history = []
  for x, mask in batches:
    xs = [float(v) for v, m in zip(x.reshape(-1), mask.reshape(-1)) if m]
    if xs:
      batch_mean = sum(xs) / len(xs)
      var = sum(v * v for v in xs) / len(xs) - batch_mean ** 2
      batch_std = math.sqrt(max(var, 1e-8))
      count += 1
      if count <= warmup:
        r = (count - 1) / warmup
        mean, std = r * mean + (1 - r) * batch_mean, r * std + (1 - r) * batch_std
      else:
        mean = (1 - momentum) * mean + momentum * batch_mean
        std = (1 - momentum) * std + momentum * batch_std
    history.append((mean, std, count))
  return history


@pytest.mark.parametrize("b,s,holes", SHAPES)
def test_exp_weights_batch_stats(b, s, holes):
  values, mask, _ = make_case(6, b, s, holes)
  adv = (values - 0.5) * 4.0
  got = W.exp_weights(adv, mask, beta=0.9, min_weight=0.1, max_weight=5.0)
  np.testing.assert_allclose(got, exp_weights_ref(adv, mask, 0.9, 0.1, 5.0), **COMPOSITE)


def test_exp_weights_external_stats_rank3():
  rng = np.random.default_rng(7)
  adv = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = rng.random((3, 5, 4)) < 0.7
  got = W.exp_weights(adv, mask, mean=0.2, std=0.7)
  np.testing.assert_allclose(got, exp_weights_ref(adv, mask, 1.0, 0.1, 3.0, 0.2, 0.7), **SIMPLE)
  np.testing.assert_allclose(W.exp_weights(adv, mask),
                             exp_weights_ref(adv, mask, 1.0, 0.1, 3.0), **COMPOSITE)


def test_exp_weights_at_most_one_valid_token():
  adv = np.array([[3.0, -2.0, 7.0]], np.float32)
  for mask in ([[0, 0, 0]], [[0, 1, 0]]):
    mask = np.array(mask, np.float32)
    np.testing.assert_array_equal(W.exp_weights(adv, mask), mask)
  # External statistics still apply to a single valid token.
  got = W.exp_weights(adv, np.array([[0, 1, 0]]), mean=0.0, std=1.0)
  np.testing.assert_allclose(got, [[0.0, math.exp(-2.0), 0.0]], **SIMPLE)


def test_ema_through_warmup_and_after():
  rng = np.random.default_rng(8)
  batches = []
  for step in range(9):
    x = rng.normal(loc=step * 0.3, scale=1.0 + step * 0.1, size=(4, 7)).astype(np.float32)
    mask = rng.random((4, 7)) < 0.6
    if step == 3:
      mask[:] = False  # zero valid tokens: state unchanged
    batches.append((x, mask))
  state = W.ema_init()
  assert state.mean.dtype == jnp.float32 and state.count.dtype == jnp.int32
  got = []
  for x, mask in batches:
    state = W.ema_update(state, x, mask, momentum=0.2, warmup_steps=4)
    got.append((float(state.mean), float(state.std), int(state.count)))
  for (gm, gs, gc), (wm, ws, wc) in zip(got, ema_ref(batches, 0.2, 4)):
    assert gc == wc
    np.testing.assert_allclose([gm, gs], [wm, ws], **COMPOSITE)
  assert got[3] == got[2]


def test_ema_from_moments_summed_over_micro_batches():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  mask = rng.random((4, 6)) < 0.5
  parts = [W.masked_moments(x[i:i + 1], mask[i:i + 1]) for i in range(4)]
  total = jax.tree.map(lambda *leaves: sum(leaves), *parts)
  whole = W.masked_moments(x, mask)
  assert int(total.count) == int(mask.sum()) == int(whole.count)
  state = W.ema_update(W.ema_init(), x, mask)
  state_parts = W.ema_update_from_moments(W.ema_init(), total)
  np.testing.assert_allclose([state.mean, state.std], [state_parts.mean, state_parts.std],
                             **SIMPLE)
