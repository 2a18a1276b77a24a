"""Parity tests for wmtp_jax.weighting.rho1 (per-head quantile, Rho-1 selection, continuous
weights) against numpy and the loop references of weighting_refs."""

import jax.numpy as jnp
import numpy as np
import pytest
from weighting_refs import COMPOSITE, SIMPLE, future_valid_ref, make_ce, normalize_ref

from wmtp_jax import weighting as W


def rho1_ref(policy_ce, ref_ce, mask, k_percent, mode, head0_always):
  b_size, s_size, n = policy_ce.shape
  valid = future_valid_ref(mask, n)
  excess = np.zeros(policy_ce.shape, np.float32)
  for b in range(b_size):
    for t in range(s_size):
      for k in range(n):
        if not valid[b, t, k]:
          continue
        diff = np.float32(policy_ce[b, t, k]) - np.float32(ref_ce[b, t + k])
        excess[b, t, k] = {"signed": diff, "absolute": abs(diff),
                           "difficult": ref_ce[b, t + k]}[mode]
  w = np.zeros(policy_ce.shape, np.float32)
  for k in range(n):
    terms = [excess[b, t, k] for b in range(b_size) for t in range(s_size) if valid[b, t, k]]
    if not terms or k_percent == 0:
      continue
    threshold = np.quantile(np.array(terms, np.float32), 1 - k_percent)
    for b in range(b_size):
      for t in range(s_size):
        w[b, t, k] = float(valid[b, t, k] and excess[b, t, k] >= threshold)
  if head0_always:
    w[..., 0] = valid[..., 0]
  return w


def rho1_continuous_ref(policy_ce, ref_ce, mask, percentile, alpha, normalize):
  b_size, s_size, n = policy_ce.shape
  valid = future_valid_ref(mask, n)
  score = np.zeros(policy_ce.shape, np.float32)
  for b in range(b_size):
    for t in range(s_size):
      for k in range(n):
        if valid[b, t, k]:
          score[b, t, k] = abs(np.float32(ref_ce[b, t + k]) - np.float32(policy_ce[b, t, k]))
  w = np.zeros(policy_ce.shape)
  for k in range(n):
    terms = [score[b, t, k] for b in range(b_size) for t in range(s_size) if valid[b, t, k]]
    if not terms:
      continue
    threshold = np.percentile(np.array(terms, np.float32), percentile)
    for b in range(b_size):
      for t in range(s_size):
        if valid[b, t, k]:
          s = float(score[b, t, k])
          w[b, t, k] = (s if s > threshold else 0.0) + alpha
  return normalize_ref(w, valid, 1.0, 0.05, 3.0) if normalize else w


@pytest.mark.parametrize("size", [1, 2, 3, 10, 11, 26, 101])
@pytest.mark.parametrize("q", [0.0, 0.25, 0.4, 0.5, 0.7, 0.9, 1.0])
def test_per_head_quantile_matches_numpy(size, q):
  rng = np.random.default_rng(size)
  x = np.stack([rng.normal(size=size), rng.integers(-2, 3, size),  # heavy ties
                np.full(size, -0.0), rng.normal(size=size) * 1e4], axis=-1).astype(np.float32)
  valid = np.ones_like(x, bool)
  valid[:, 3] = rng.random(size) < 0.5
  got = W.per_head_quantile(x[None], valid[None], q)
  for k in range(4):
    terms = x[valid[:, k], k]
    want = np.quantile(terms, q) if terms.size else np.nan
    np.testing.assert_allclose(got[k], want, **SIMPLE)


def test_per_head_quantile_no_valid_term_is_nan():
  got = W.per_head_quantile(np.ones((2, 3, 2), np.float32), np.zeros((2, 3, 2), bool), 0.5)
  assert np.isnan(np.asarray(got)).all()


@pytest.mark.parametrize("mode", W.RHO1_MODES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k_percent", [0.0, 0.3, 0.6, 1.0])
def test_rho1_weights(mode, ties, k_percent):
  policy, ref, mask = make_ce(10, 6, 23, 4, ties)
  got = W.rho1_weights(policy, ref, mask, k_percent=k_percent, mode=mode)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, rho1_ref(policy, ref, mask, k_percent, mode, False))


def test_rho1_edge_cases():
  policy, ref, mask = make_ce(11, 4, 9, 3, ties=False)
  valid = future_valid_ref(mask, 3)
  np.testing.assert_array_equal(W.future_valid(mask, 3), valid)
  np.testing.assert_array_equal(W.rho1_weights(policy, ref, mask, k_percent=0.0), 0.0)
  np.testing.assert_array_equal(W.rho1_weights(policy, ref, mask, k_percent=1.0), valid)
  got = W.rho1_weights(policy, ref, mask, k_percent=0.0, head0_always=True)
  np.testing.assert_array_equal(got[..., 0], valid[..., 0])
  np.testing.assert_array_equal(got[..., 1:], 0.0)
  got = W.rho1_weights(policy, ref, mask, k_percent=0.5, head0_always=True)
  np.testing.assert_array_equal(got, rho1_ref(policy, ref, mask, 0.5, "signed", True))
  # S = 1: no term has a target; a head with no valid term is all 0.
  np.testing.assert_array_equal(
      W.rho1_weights(policy[:, :1], ref[:, :1], mask[:, :1]), np.zeros((4, 1, 3)))
  # Keeps the highest excess (the paper), not the lowest.
  policy = np.array([[[5.0], [1.0], [3.0], [0.0]]], np.float32)
  got = W.rho1_weights(policy, np.zeros((1, 4), np.float32), np.ones((1, 4)), k_percent=0.5)
  np.testing.assert_array_equal(got[0, :, 0], [1.0, 0.0, 1.0, 0.0])


def test_rho1_threshold_on_a_sample_is_kept():
  # k_percent=0.4 with 26 valid terms: the index 0.6·25 = 15 is integral, but float32(0.6)·25
  # rounds above 15. numpy returns x_(15) exactly and keeps it; so must we.
  rng = np.random.default_rng(20)
  policy = rng.permutation(27).astype(np.float32)[None, :, None]
  got = W.rho1_weights(policy, np.zeros((1, 27), np.float32), np.ones((1, 27)), k_percent=0.4)
  want = rho1_ref(policy, np.zeros((1, 27)), np.ones((1, 27)), 0.4, "signed", False)
  assert want.sum() == 11
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("normalize", [False, True])
def test_rho1_continuous_weights(normalize):
  policy, ref, mask = make_ce(13, 6, 17, 4, ties=False)
  got = W.rho1_continuous_weights(policy, ref, mask, percentile=70.0, alpha=0.5,
                                  normalize=normalize)
  want = rho1_continuous_ref(policy, ref, mask, 70.0, 0.5, normalize)
  np.testing.assert_allclose(got, want, **COMPOSITE)
