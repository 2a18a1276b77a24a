"""Parity tests for wmtp_jax.weighting.stats (logging statistics) against the loop references of
weighting_refs."""

import math

import numpy as np
import pytest
from weighting_refs import (COMPOSITE, SHAPES, SIMPLE, future_valid_ref, make_case, make_ce,
                            mean_std_ref)

from wmtp_jax import weighting as W


def stats_ref(x, mask):
  xs = [float(v) for v, m in zip(x.reshape(-1), mask.reshape(-1)) if m]
  if not xs:
    return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
  mean, std = mean_std_ref(xs)
  return {"mean": mean, "std": std, "min": min(xs), "max": max(xs)}


def entropy_ref(w, mask):
  ws = [float(v) for v, m in zip(w.reshape(-1), mask.reshape(-1)) if m]
  total = sum(ws)
  if len(ws) <= 1 or total <= 0:
    return 0.0
  return -sum(v / total * math.log(v / total) for v in ws if v > 0) / math.log(len(ws))


def test_selection_ratio_per_head():
  policy, ref, mask = make_ce(12, 5, 11, 3, ties=False)
  valid = future_valid_ref(mask, 3)
  w = np.asarray(W.rho1_weights(policy, ref, mask, k_percent=0.6))
  want = [sum(w[b, t, k] > 0 for b in range(5) for t in range(11) if valid[b, t, k])
          / max(sum(valid[b, t, k] for b in range(5) for t in range(11)), 1) for k in range(3)]
  np.testing.assert_allclose(W.selection_ratio_per_head(w, valid), want, **SIMPLE)


def test_weight_histogram():
  rng = np.random.default_rng(5)
  w = rng.uniform(-0.5, 3.5, size=(4, 9, 3)).astype(np.float32)
  w[0, 0, 0], w[0, 0, 1] = 3.0, 0.0  # exactly the upper bound and 0
  valid = rng.random((4, 9, 3)) < 0.7
  want = np.zeros(30)
  for b, t, k in np.ndindex(*w.shape):
    if valid[b, t, k]:
      want[min(max(int(np.floor(w[b, t, k] * 30 / 3.0)), 0), 29)] += 1  # width 3.0 / 30
  got = W.weight_histogram(w, valid, upper=3.0)
  np.testing.assert_array_equal(got, want)
  assert got.sum() == valid.sum()


@pytest.mark.parametrize("b,s,holes", SHAPES)
def test_stats(b, s, holes):
  values, mask, _ = make_case(16, b, s, holes)
  for row_mask in (mask, np.zeros_like(mask)):
    got = W.weight_stats(values, row_mask)
    want = stats_ref(values, row_mask)
    want["entropy"] = entropy_ref(values, row_mask)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], err_msg=key, **COMPOSITE)
    got_td = W.td_stats(values, row_mask)
    assert set(got_td) == {"mean", "std", "min", "max"}


def test_entropy_extremes():
  mask = np.ones((1, 4))
  np.testing.assert_allclose(W.weight_stats(np.full((1, 4), 2.0), mask)["entropy"], 1.0, **SIMPLE)
  np.testing.assert_allclose(
      W.weight_stats(np.array([[0.0, 3.0, 0.0, 0.0]]), mask)["entropy"], 0.0, **SIMPLE)


def test_explained_variance():
  values, mask, rewards = make_case(17, 6, 13, False)
  returns = W.lambda_returns(values, rewards, mask)
  ret = [float(r) for r, m in zip(np.asarray(returns).reshape(-1), mask.reshape(-1)) if m]
  res = [float(r - v) for r, v, m in zip(np.asarray(returns).reshape(-1), values.reshape(-1),
                                         mask.reshape(-1)) if m]
  want = 1.0 - mean_std_ref(res)[1] ** 2 / mean_std_ref(ret)[1] ** 2
  np.testing.assert_allclose(W.explained_variance(values, returns, mask), want, **COMPOSITE)
  np.testing.assert_allclose(W.explained_variance(returns, returns, mask), 1.0, **SIMPLE)
  assert float(W.explained_variance(values, returns, np.zeros_like(mask))) == 0.0
