"""Per-term weights over the MTP heads ``[B, S, n]``: the validity grid of the terms, the
per-position softmax over heads and the normalisation of continuous weights."""

import functools

import jax
import jax.numpy as jnp

from wmtp_jax import arrays
from wmtp_jax.arrays import check_rank, check_same_shape
from wmtp_jax.weighting.common import (WHITEN_EPS, bool_mask, check_bxs_with_mask, f32,
                                       masked_mean_var)


@functools.partial(jax.jit, static_argnames=("n_future",))
def future_valid(mask, n_future: int) -> jax.Array:
  """Validity of the per-term grid, ``[B, S, n]`` bool.

  ``valid[b, t, k] = (t+1+k ≤ S−1) and mask[b, t+1+k]``.
  """
  check_rank("mask", mask, (2,))
  return arrays.future_window(bool_mask(mask), n_future, False)


@functools.partial(jax.jit, static_argnames=("n_future",))
def softmax_head_weights(scores, mask, n_future: int, *, temperature=1.0):
  """Per-position softmax over the heads, ``[B, S, n]`` float32.

  ``w[b, t, k] = softmax_k(scores[b, t+1+k]/temperature)`` over the heads whose term is valid
  (``future_valid``); each position's valid heads sum to 1, invalid terms (and positions with no
  valid head) are 0.

  Args:
    scores: ``[B, S]`` per target token (e.g. TD errors δ).
    mask: ``[B, S]`` response mask.
  """
  check_bxs_with_mask("scores", scores, mask)
  valid_BxSxn = future_valid(mask, n_future)
  logits_BxSxn = arrays.future_window(f32(scores), n_future, 0.0) / f32(temperature)
  logits_BxSxn = jnp.where(valid_BxSxn, logits_BxSxn, -jnp.inf)
  max_BxSx1 = jnp.max(logits_BxSxn, axis=-1, keepdims=True)
  max_BxSx1 = jnp.where(jnp.isfinite(max_BxSx1), max_BxSx1, 0.0)
  exp_BxSxn = jnp.where(valid_BxSxn, jnp.exp(logits_BxSxn - max_BxSx1), 0.0)
  total_BxSx1 = jnp.sum(exp_BxSxn, axis=-1, keepdims=True)
  return exp_BxSxn / jnp.where(total_BxSx1 > 0.0, total_BxSx1, 1.0)


@jax.jit
def normalize_weights(w, valid, *, temperature=1.0, eps=0.05, max_weight=3.0):
  """Normalisation pipeline for continuous weights, over all valid terms of ``w`` jointly.

  z-score (Bessel std, +1e-8) → softmax(z/temperature) → ×N (mean 1) → clip [eps, max_weight]
  → divide by the mean (mean 1 again; the clip bounds may then be exceeded slightly). Invalid
  terms are 0; a single valid term gets 1.

  Args:
    w: any shape, e.g. ``[B, S, n]``.
    valid: bool-like, same shape.
    temperature, eps, max_weight: defaults 1.0, 0.05, 3.0.
  """
  check_same_shape("valid", valid, "w", w)
  w = f32(w)
  valid = bool_mask(valid)
  mean, var, count = masked_mean_var(w, valid)
  logits = jnp.where(valid, (w - mean) / (jnp.sqrt(var) + WHITEN_EPS) / f32(temperature), -jnp.inf)
  shift = jnp.where(count > 0.0, jnp.max(logits), 0.0)
  exp = jnp.where(valid, jnp.exp(logits - shift), 0.0)
  scaled = exp * (count / jnp.maximum(jnp.sum(exp), jnp.finfo(jnp.float32).tiny))
  clipped = jnp.where(valid, jnp.clip(scaled, f32(eps), f32(max_weight)), 0.0)
  return clipped * (jnp.maximum(count, 1.0) / jnp.maximum(jnp.sum(clipped),
                                                          jnp.finfo(jnp.float32).tiny))
