"""Logging statistics of values, advantages and weights over the valid entries: mean / std /
min / max, weight entropy, explained variance, Rho-1 selection ratio and weight histogram."""

import functools

import jax
import jax.numpy as jnp

from wmtp_jax.arrays import check_rank, check_same_shape
from wmtp_jax.weighting.common import bool_mask, f32, masked_mean_var


@jax.jit
def td_stats(x, mask) -> dict[str, jax.Array]:
  """``{"mean", "std", "min", "max"}`` of ``x`` over the valid entries (float32 scalars).

  Any shape (TD errors, advantages, weights); std with Bessel's correction; all 0 with no valid
  entry, std 0 with one.
  """
  check_same_shape("mask", mask, "x", x)
  x = f32(x)
  valid = bool_mask(mask)
  mean, var, count = masked_mean_var(x, valid)
  has_data = count > 0.0
  return {"mean": mean, "std": jnp.sqrt(var),
          "min": jnp.where(has_data, jnp.min(jnp.where(valid, x, jnp.inf)), 0.0),
          "max": jnp.where(has_data, jnp.max(jnp.where(valid, x, -jnp.inf)), 0.0)}


@jax.jit
def weight_stats(w, mask) -> dict[str, jax.Array]:
  """``td_stats(w, mask)`` plus ``"entropy"``: normalised entropy of the (non-negative) weights.

  ``−Σ p log p / log N`` with ``p = w/Σw`` over the N valid terms (0·log 0 = 0): 1 for uniform
  weights, 0 for a single nonzero weight; defined as 0 when N ≤ 1 or Σw = 0.
  """
  stats = td_stats(w, mask)
  w = f32(w)
  valid = bool_mask(mask)
  count = jnp.sum(valid, dtype=jnp.float32)
  total = jnp.sum(jnp.where(valid, w, 0.0))
  p = jnp.where(valid, w, 0.0) / jnp.where(total > 0.0, total, 1.0)
  neg_plogp = -jnp.sum(jnp.where(p > 0.0, p * jnp.log(jnp.where(p > 0.0, p, 1.0)), 0.0))
  defined = (count > 1.0) & (total > 0.0)
  stats["entropy"] = jnp.where(defined, neg_plogp / jnp.log(jnp.maximum(count, 2.0)), 0.0)
  return stats


@jax.jit
def explained_variance(values, returns, mask):
  """``1 − Var[returns − values]/Var[returns]`` over valid tokens, float32 scalar.

  Any shape (same for all three). 1 is a perfect critic, 0 no better than a constant; defined as
  0 when fewer than 2 valid tokens or ``Var[returns] = 0``.
  """
  check_same_shape("returns", returns, "values", values)
  check_same_shape("mask", mask, "values", values)
  valid = bool_mask(mask)
  returns = f32(returns)
  _, var_ret, count = masked_mean_var(returns, valid)
  _, var_res, _ = masked_mean_var(returns - f32(values), valid)
  defined = (count > 1.0) & (var_ret > 0.0)
  return jnp.where(defined, 1.0 - var_res / jnp.where(defined, var_ret, 1.0), 0.0)


@jax.jit
def selection_ratio_per_head(w, valid):
  """Fraction of valid terms with ``w > 0`` per head (Rho-1 logging), ``[n]`` float32.

  ``w`` and ``valid`` are ``[B, S, n]``; a head without valid terms gives 0.
  """
  check_rank("w", w, (3,))
  check_same_shape("valid", valid, "w", w)
  valid = bool_mask(valid)
  selected_n = jnp.sum(valid & (f32(w) > 0.0), axis=(0, 1), dtype=jnp.float32)
  return selected_n / jnp.maximum(jnp.sum(valid, axis=(0, 1), dtype=jnp.float32), 1.0)


@functools.partial(jax.jit, static_argnames=("bins",))
def weight_histogram(w, mask, *, upper, bins: int = 30):
  """Counts of the valid weights in ``bins`` equal buckets over ``[0, upper]``, ``[bins]`` float32.

  Bucket ``i`` holds ``i·upper/bins ≤ w < (i+1)·upper/bins``; the last bucket also holds every
  ``w ≥ upper`` and the first every ``w < 0``, so the counts sum to the number of valid entries.
  Any shape (``w`` and ``mask`` alike). ``upper`` is traced (e.g. the clip bound ``w_max``).
  """
  check_same_shape("mask", mask, "w", w)
  index = jnp.clip(jnp.floor(f32(w) * (bins / upper)), 0, bins - 1).astype(jnp.int32)
  return jnp.zeros(bins, jnp.float32).at[index.reshape(-1)].add(
      bool_mask(mask).reshape(-1).astype(jnp.float32))
