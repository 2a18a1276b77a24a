"""Rho-1 weights (DESIGN §3, Lin et al. 2024): per-head top-k% selection by excess loss over a
reference model, its continuous variant, and the exact per-head quantile they threshold with."""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from wmtp_jax import arrays
from wmtp_jax.arrays import check_dim, check_rank, check_same_shape
from wmtp_jax.weighting.common import bool_mask, f32
from wmtp_jax.weighting.heads import future_valid, normalize_weights

RHO1_MODES = ("signed", "absolute", "difficult")


def _check_ce(policy_ce, ref_ce, mask) -> None:
  check_rank("policy_ce", policy_ce, (3,))
  check_rank("ref_ce", ref_ce, (2,))
  check_dim("ref_ce", ref_ce, 0, "policy_ce", policy_ce, 0)
  check_dim("ref_ce", ref_ce, 1, "policy_ce", policy_ce, 1)
  check_same_shape("mask", mask, "ref_ce", ref_ce)


def _check_fraction(name: str, value: float, upper: float) -> None:
  if not 0.0 <= value <= upper:
    raise ValueError(f"{name} must be in [0, {upper}], got {value!r}")


def _sortable_keys(x):
  """uint32 keys with the same order as the float32 values (−0.0 sorts just below +0.0)."""
  bits = lax.bitcast_convert_type(x, jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))


def _from_sortable_keys(keys):
  bits = jnp.where(keys >> 31 == 1, keys & jnp.uint32(0x7FFFFFFF), ~keys)
  return lax.bitcast_convert_type(bits, jnp.float32)


def _kth_smallest_key(keys_Mxn, rank_n):
  """Per column n, the key of 0-indexed order ``rank`` among the M rows (bitwise bisection).

  Builds, bit by bit, the largest v with ``#{keys < v} ≤ rank``, which is the rank-th smallest
  key: 32 counting passes, no sort (XLA's CPU sort is ~10× slower).
  """
  def body(i, result_n):
    candidate_n = result_n | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
    below_n = jnp.sum(keys_Mxn < candidate_n[None, :], axis=0, dtype=jnp.int32)
    return jnp.where(below_n <= rank_n, candidate_n, result_n)

  return lax.fori_loop(0, 32, body, jnp.zeros(keys_Mxn.shape[1:], jnp.uint32))


@jax.jit
def per_head_quantile(x, valid, q):
  """Per-head quantile over the valid terms of the whole batch, ``[n]`` float32.

  numpy's default (linear) method: virtual index ``i = q·(N−1)`` (N = valid terms of the head),
  ``lerp(x_(⌊i⌋), x_(⌊i⌋+1), i − ⌊i⌋)`` with numpy's two-sided lerp. The index is computed in
  float32 and snapped to the nearest integer when within float32 rounding error of it, so a
  quantile that lands on a sample returns that sample exactly, as numpy's float64 index does
  (this keeps ``excess ≥ threshold`` selections identical to numpy's, ties included); between
  samples the result agrees with numpy up to float32 rounding of the index. A head without valid
  terms gives NaN.

  Args:
    x: ``[B, S, n]`` (any rank ≥ 1; the last axis is the head axis).
    valid: bool-like, same shape.
    q: scalar in [0, 1].
  """
  check_same_shape("valid", valid, "x", x)
  n = x.shape[-1]
  keys_Mxn = _sortable_keys(f32(x)).reshape(-1, n)
  valid_Mxn = bool_mask(valid).reshape(-1, n)
  keys_Mxn = jnp.where(valid_Mxn, keys_Mxn, jnp.uint32(0xFFFFFFFF))
  count_n = jnp.sum(valid_Mxn, axis=0, dtype=jnp.int32)
  index_n = f32(q) * f32(jnp.maximum(count_n - 1, 0))
  nearest_n = jnp.round(index_n)
  close_n = jnp.abs(index_n - nearest_n) <= 4 * jnp.finfo(jnp.float32).eps * index_n
  index_n = jnp.where(close_n, nearest_n, index_n)
  lo_n = jnp.floor(index_n)
  frac_n = index_n - lo_n
  lo_n = lo_n.astype(jnp.int32)
  lo_key_n = _kth_smallest_key(keys_Mxn, lo_n)
  # The next order statistic: the same key if it repeats, else the smallest larger key.
  n_le_n = jnp.sum(keys_Mxn <= lo_key_n[None, :], axis=0, dtype=jnp.int32)
  above_n = jnp.min(jnp.where(keys_Mxn > lo_key_n[None, :], keys_Mxn, jnp.uint32(0xFFFFFFFF)),
                    axis=0)
  at_end_n = (n_le_n >= lo_n + 2) | (lo_n + 1 >= count_n)
  hi_key_n = jnp.where(at_end_n, lo_key_n, above_n)
  lo_x_n, hi_x_n = _from_sortable_keys(lo_key_n), _from_sortable_keys(hi_key_n)
  diff_n = hi_x_n - lo_x_n
  quantile_n = jnp.where(frac_n < 0.5, lo_x_n + diff_n * frac_n,
                         hi_x_n - diff_n * (1.0 - frac_n))
  return jnp.where(count_n > 0, quantile_n, jnp.nan)


@functools.partial(jax.jit, static_argnames=("k_percent", "mode", "head0_always"))
def rho1_weights(policy_ce, ref_ce, mask, *, k_percent=0.6, mode="signed", head0_always=False):
  """Rho-1 top-k% selection per head (Lin et al. 2024: keeps the HIGHEST excess), ``[B, S, n]``.

  Args:
    policy_ce: ``[B, S, n]``, head k's CE at position t against ``x_{t+1+k}``.
    ref_ce: ``[B, S]``, reference (next-token) CE at position t against ``x_{t+1}``; the
      reference loss of the target of term (t, k) is ``ref_ce[t+k]``.
    mask: ``[B, S]`` response mask of token t; term (t, k) is valid per ``future_valid``.
    k_percent: static fraction in [0, 1] of valid terms kept per head (0 → none, 1 → all).
    mode: ``"signed"`` (excess = policy − ref), ``"absolute"`` (|policy − ref|) or
      ``"difficult"`` (ref alone).
    head0_always: head 0 gets weight 1 on every valid term.

  Returns:
    float32 in {0, 1}: ``1[excess ≥ per_head_quantile(excess, valid, 1 − k_percent)]`` on valid
    terms (ties at the threshold are all kept), 0 on invalid terms and heads without valid terms.
  """
  _check_ce(policy_ce, ref_ce, mask)
  if mode not in RHO1_MODES:
    raise ValueError(f"unknown Rho-1 mode {mode!r}; expected one of {RHO1_MODES}")
  _check_fraction("k_percent", k_percent, 1.0)
  n = policy_ce.shape[-1]
  valid_BxSxn = future_valid(mask, n)
  ref_BxSxn = arrays.future_window(f32(ref_ce), n, 0.0, offset=0)
  policy_BxSxn = f32(policy_ce)
  excess_BxSxn = {"signed": policy_BxSxn - ref_BxSxn,
                  "absolute": jnp.abs(policy_BxSxn - ref_BxSxn),
                  "difficult": ref_BxSxn}[mode]
  if k_percent == 0.0:
    selected_BxSxn = jnp.zeros_like(valid_BxSxn)
  else:
    threshold_n = per_head_quantile(excess_BxSxn, valid_BxSxn, 1.0 - k_percent)
    selected_BxSxn = valid_BxSxn & (excess_BxSxn >= threshold_n[None, None, :])
  if head0_always:
    selected_BxSxn = selected_BxSxn.at[..., 0].set(valid_BxSxn[..., 0])
  return selected_BxSxn.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("percentile", "normalize"))
def rho1_continuous_weights(policy_ce, ref_ce, mask, *, percentile=40.0, alpha=1.0,
                            normalize=True):
  """Continuous Rho-1 weights, ``[B, S, n]`` float32 (same inputs as ``rho1_weights``).

  ``s = |CE_ref(t+k) − CE_policy(t, k)|`` on valid terms, per head
  ``w = s·1[s > percentile_p(s)] + alpha`` (p = ``percentile`` in [0, 100], numpy's linear
  percentile over the head's valid terms), then ``normalize_weights(w, valid)`` with its defaults
  if ``normalize``. Invalid terms are 0. Defaults: percentile 40 (the top 60% of terms, as
  ``k_percent=0.6``) get ``1 + s``, the rest 1. The z-score in ``normalize_weights`` removes the
  offset, so ``alpha`` only matters with ``normalize=False``.
  """
  _check_ce(policy_ce, ref_ce, mask)
  _check_fraction("percentile", percentile, 100.0)
  n = policy_ce.shape[-1]
  valid_BxSxn = future_valid(mask, n)
  ref_BxSxn = arrays.future_window(f32(ref_ce), n, 0.0, offset=0)
  score_BxSxn = jnp.abs(ref_BxSxn - f32(policy_ce))
  threshold_n = per_head_quantile(score_BxSxn, valid_BxSxn, percentile / 100.0)
  w_BxSxn = jnp.where(score_BxSxn > threshold_n[None, None, :], score_BxSxn, 0.0) + f32(alpha)
  w_BxSxn = jnp.where(valid_BxSxn, w_BxSxn, 0.0)
  if normalize:
    w_BxSxn = normalize_weights(w_BxSxn, valid_BxSxn)
  return w_BxSxn
