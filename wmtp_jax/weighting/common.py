"""Helpers shared by the weighting modules: float32 casts, boolean masks, masked moments, the
``[B, S]`` argument check and a token region as per-term mask."""

import jax
import jax.numpy as jnp

from wmtp_jax import arrays
from wmtp_jax.arrays import check_dim, check_rank, check_same_shape

WHITEN_EPS = 1e-8  # added to σ when whitening (DESIGN §3)


def f32(x) -> jax.Array:
  """``x`` as a float32 array."""
  return jnp.asarray(x, jnp.float32)


def bool_mask(mask) -> jax.Array:
  """Boolean view of a 0/1 mask of any dtype."""
  mask = jnp.asarray(mask)
  return mask if mask.dtype == jnp.bool_ else mask != 0


def masked_mean_var(x, valid):
  """Mean and variance (Bessel's correction) of ``x`` over ``valid``; returns (mean, var, count).

  All are float32 scalars; mean = var = 0 when count = 0 and var = 0 when count = 1.
  """
  count = jnp.sum(valid, dtype=jnp.float32)
  mean = jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(count, 1.0)
  sq_dev = jnp.where(valid, jnp.square(x - mean), 0.0)
  return mean, jnp.sum(sq_dev) / jnp.maximum(count - 1.0, 1.0), count


def check_bxs_with_mask(name: str, x, mask) -> None:
  """``x`` must be ``[B, S]`` and ``mask`` of the same shape."""
  check_rank(name, x, (2,))
  check_same_shape("mask", mask, name, x)


def region_terms(name: str, region_mask, like_name: str, like) -> jax.Array:
  """Boolean ``region_mask [B, S]`` (target-aligned: the token at t+1 is the target of position t)
  on the terms of ``like``: itself for ``[B, S]``, and for ``[B, S, n]`` the head-k term of
  position t in the region when its target x_{t+1+k} is (``arrays.future_window``). The shapes
  are checked, naming ``name`` and ``like_name``."""
  check_rank(name, region_mask, (2,))
  check_dim(name, region_mask, 0, like_name, like, 0)
  check_dim(name, region_mask, 1, like_name, like, 1)
  region = bool_mask(region_mask)
  if like.ndim == 3:
    region = arrays.future_window(region, like.shape[2], False)
  return region
