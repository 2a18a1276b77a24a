"""Tests for wmtp_jax.weighting.controls: the properties that make the control weights controls,
checked against loops on random masks with empty rows and single-token rows."""

import jax
import numpy as np
import pytest

from wmtp_jax import weighting

SIMPLE = dict(rtol=1e-5, atol=1e-6)


def _mask(rng, b=7, s=12):
  """A random response mask (a prompt, then response, then padding) with an empty row and a
  single-token row."""
  mask = np.zeros((b, s), np.int32)
  for row in range(b):
    start = rng.integers(0, s // 2)
    mask[row, start:rng.integers(start, s + 1)] = 1
  mask[0] = 0
  mask[1] = 0
  mask[1, 5] = 1
  return mask


def _valid(mask, n):
  """Per-term validity by a loop: term (t, k) is valid iff t+1+k < S and mask[t+1+k]."""
  if n is None:
    return mask.astype(bool)
  b, s = mask.shape
  valid = np.zeros((b, s, n), bool)
  for row in range(b):
    for t in range(s):
      for k in range(n):
        valid[row, t, k] = t + 1 + k < s and mask[row, t + 1 + k] != 0
  return valid


@pytest.mark.parametrize("n", [None, 3])
def test_shuffled_is_a_permutation_of_each_rows_valid_weights(n):
  rng = np.random.default_rng(0)
  mask = _mask(rng)
  valid = _valid(mask, n)
  shape = mask.shape if n is None else (*mask.shape, n)
  weights = np.where(valid, rng.uniform(0.5, 3.0, shape), 0.0).astype(np.float32)
  out = np.asarray(weighting.shuffled_weights(jax.random.key(1), weights, mask))
  columns = [slice(None)] if n is None else range(n)
  moved = 0
  for row in range(mask.shape[0]):
    for k in columns:
      w_row, o_row, v_row = weights[row][..., k], out[row][..., k], valid[row][..., k]
      np.testing.assert_array_equal(o_row[~v_row], w_row[~v_row])  # zeros outside stay
      np.testing.assert_array_equal(np.sort(o_row[v_row]), np.sort(w_row[v_row]))
      moved += int(np.any(o_row[v_row] != w_row[v_row]))
  assert moved > 0  # it does permute
  assert np.all(out[~valid] == 0.0) and np.all(out[valid] > 0.0)  # no prompt zero moves in


def test_shuffled_leaves_nonzero_entries_outside_the_mask_in_place():
  weights = np.arange(1.0, 9.0, dtype=np.float32).reshape(1, 8)
  mask = np.array([[0, 0, 1, 1, 1, 1, 0, 0]])
  out = np.asarray(weighting.shuffled_weights(jax.random.key(3), weights, mask))
  np.testing.assert_array_equal(out[0, [0, 1, 6, 7]], [1, 2, 7, 8])
  assert sorted(out[0, 2:6]) == [3, 4, 5, 6]


def test_shuffled_positions_are_uniform_over_keys():
  # Each of 4 valid weights should land on each of the 4 valid positions a quarter of the time.
  weights = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)
  mask = np.array([[0, 1, 1, 1, 1]])
  shuffle = jax.jit(jax.vmap(weighting.shuffled_weights, in_axes=(0, None, None)))
  out = np.asarray(shuffle(jax.random.split(jax.random.key(0), 4000), weights, mask))[:, 0]
  share = np.mean(out[:, 1:] == 1.0, axis=0)  # where weight 1.0 went
  np.testing.assert_allclose(share, 0.25, atol=0.03)  # binomial SE 0.007: > 4 SE


def test_matched_random_moments_mask_and_clip():
  rng = np.random.default_rng(0)
  mask = (rng.uniform(size=(400, 600)) < 0.8).astype(np.int32)
  mask[0] = 0
  key = jax.random.key(7)
  # No effective clip: the sample moments match in expectation. 192k draws: the standard error
  # of the mean is 0.9/sqrt(192k) = 0.002 (0.7% tolerance ≈ 4.5 SE); the sample std of this
  # LogNormal (σ² = 0.39) has a standard error well under 1%, so 3% is loose but can still fail.
  w = np.asarray(weighting.matched_random_weights(key, mask, mean=1.3, std=0.9, min_weight=0.0,
                                                  max_weight=1e9))
  drawn = w[mask != 0]
  np.testing.assert_allclose(drawn.mean(), 1.3, rtol=0.007)
  np.testing.assert_allclose(drawn.std(), 0.9, rtol=0.03)
  assert np.all(w[mask == 0] == 0.0)
  clipped = np.asarray(weighting.matched_random_weights(key, mask, mean=1.3, std=0.9,
                                                        min_weight=0.1, max_weight=3.0))
  assert np.all(clipped[mask == 0] == 0.0)
  inside = clipped[mask != 0]
  assert inside.min() == np.float32(0.1) and inside.max() == np.float32(3.0)
  np.testing.assert_array_equal(inside, np.clip(drawn, np.float32(0.1), np.float32(3.0)))
  constant = weighting.matched_random_weights(key, mask[:2], mean=1.3, std=0.0, min_weight=0.1,
                                              max_weight=3.0)
  np.testing.assert_allclose(np.asarray(constant)[mask[:2] != 0], 1.3, **SIMPLE)


def test_lognormal_parameters_give_the_moments():
  mu, sigma = weighting.lognormal_parameters(1.27, 0.88)
  mean = np.exp(mu + sigma**2 / 2)
  std = np.sqrt((np.exp(sigma**2) - 1) * np.exp(2 * mu + sigma**2))
  np.testing.assert_allclose([mean, std], [1.27, 0.88], **SIMPLE)


@pytest.mark.parametrize("n", [None, 2])
def test_oracle_weights_by_loop(n):
  rng = np.random.default_rng(2)
  mask = _mask(rng)
  critical = (rng.uniform(size=mask.shape) < 0.3).astype(np.int32)
  valid_arg = mask if n is None else _valid(mask, n)
  out = np.asarray(weighting.oracle_weights(critical, valid_arg, mean=1.27, low=0.1, high=3.0))
  valid = _valid(mask, n)
  raw = np.zeros(valid.shape, np.float64)
  for index in zip(*np.nonzero(valid)):
    row, t = index[0], index[1]
    target = t if n is None else t + 1 + index[2]
    raw[index] = 3.0 if critical[row, target] else 0.1
  want = raw * 1.27 / raw[valid].mean()
  np.testing.assert_allclose(out, want, **SIMPLE)
  np.testing.assert_allclose(out[valid].mean(), 1.27, **SIMPLE)
  empty = weighting.oracle_weights(critical, np.zeros_like(mask), mean=1.27, low=0.1, high=3.0)
  assert np.all(np.asarray(empty) == 0.0)


def test_mean_one_scale_and_options():
  np.testing.assert_allclose(weighting.mean_one_scale(7.5, 10), 10 / 7.5, **SIMPLE)
  assert float(weighting.mean_one_scale(0.0, 10)) == 1.0
  assert float(weighting.mean_one_scale(3.0, 0)) == 1.0
  weighting.check_options({"control": "oracle", "renormalize": "mean1"})
  with pytest.raises(ValueError, match=r"config\.weighting\.control='shufled'"):
    weighting.check_options({"control": "shufled", "renormalize": "none"})
  with pytest.raises(ValueError, match=r"config\.weighting\.renormalize='mean'"):
    weighting.check_options({"control": "none", "renormalize": "mean"})
