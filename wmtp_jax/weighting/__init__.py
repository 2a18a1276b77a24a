"""Token weighting for WMTP (DESIGN.md §3): TD errors, GAE, λ-returns, exponential weights,
EMA statistics, Rho-1 selection, per-position softmax over heads, normalisation and logging stats.

All public functions are pure, ``jax.jit``-compiled and vectorised (no Python loop over batch or
time; recurrences use ``lax.scan`` on CPU and ``lax.associative_scan`` elsewhere). Inputs of any
float dtype (bf16, f16, f32) are cast to float32 and every float output is float32.

Shape legend: ``B`` batch rows, ``S`` positions, ``n`` MTP heads.

Index conventions (DESIGN.md §2):
  * ``mask[b, t]`` is the response mask of token ``x_t`` (nonzero = valid; bool, int or float).
    ``T`` is, per row, the last index with ``mask = 1``; a row without a valid token yields zeros.
  * ``values[b, t]`` = V(s_t), the value of the state after reading ``x_0 … x_t``. Prompt
    positions have values too; the mask only selects which outputs are kept.
  * Per-token quantities ``[B, S]`` (TD errors, advantages, 2-D weights) live on the *target*
    token: head ``k`` at position ``t`` uses entry ``t+1+k``.
  * Per-term quantities ``[B, S, n]``: entry ``[b, t, k]`` is head ``k`` at position ``t``
    (target ``x_{t+1+k}``); the term is valid iff ``t+1+k ≤ S−1`` and ``mask[b, t+1+k]``
    (see ``future_valid``).

Numeric hyper-parameters (γ, λ, β, clip bounds, momentum, temperature, …) are traced, so changing
them does not recompile. Options that change shapes or code paths (``n_future``, ``mode``,
``head0_always``, ``normalize``) and the selection fractions ``k_percent`` / ``percentile``
(validated and converted in float64 at trace time) are static.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from wmtp_jax import arrays
from wmtp_jax.arrays import check_dim, check_rank, check_same_shape

RHO1_MODES = ("signed", "absolute", "difficult")
_WHITEN_EPS = 1e-8  # added to σ when whitening (DESIGN §3)
_VAR_FLOOR = 1e-8  # EMA: std = sqrt(max(var, 1e-8))


# ----------------------------------------------------------------------------- helpers


def _f32(x) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _valid(mask) -> jax.Array:
  """Boolean view of a 0/1 mask of any dtype."""
  mask = jnp.asarray(mask)
  return mask if mask.dtype == jnp.bool_ else mask != 0


def _masked_mean_var(x, valid):
  """Mean and variance (Bessel's correction) of ``x`` over ``valid``; returns (mean, var, count).

  All are float32 scalars; mean = var = 0 when count = 0 and var = 0 when count = 1.
  """
  count = jnp.sum(valid, dtype=jnp.float32)
  mean = jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(count, 1.0)
  sq_dev = jnp.where(valid, jnp.square(x - mean), 0.0)
  return mean, jnp.sum(sq_dev) / jnp.maximum(count - 1.0, 1.0), count


def _reverse_recurrence_scan(a_BxS, b_BxS, init_B):
  def step(x_next_B, ab_B):
    x_B = ab_B[0] * x_next_B + ab_B[1]
    return x_B, x_B

  _, x_SxB = lax.scan(step, init_B, (a_BxS.T, b_BxS.T), reverse=True)
  return x_SxB.T


def _reverse_recurrence_assoc(a_BxS, b_BxS, init_B):
  # Element t is the affine map x_{t+1} ↦ a_t·x_{t+1} + b_t. With reverse=True the scan runs from
  # t = S−1 down, so `later` (maps x_S ↦ x_{t+1}) is composed before `earlier`.
  def compose(later, earlier):
    return earlier[0] * later[0], earlier[0] * later[1] + earlier[1]

  a_acc, b_acc = lax.associative_scan(compose, (a_BxS, b_BxS), reverse=True, axis=1)
  return a_acc * init_B[:, None] + b_acc


def _reverse_linear_recurrence(a_BxS, b_BxS, init_B):
  """``x_t = a_t·x_{t+1} + b_t`` for t = S−1 … 0 with ``x_S = init``; returns ``x`` ``[B, S]``.

  Sequential ``lax.scan`` on CPU (fastest there); log-depth ``lax.associative_scan`` on GPU/TPU,
  where 2048 sequential loop iterations would dominate.
  """
  return lax.platform_dependent(a_BxS, b_BxS, init_B, cpu=_reverse_recurrence_scan,
                                default=_reverse_recurrence_assoc)


def _check_bxs_with_mask(name: str, x, mask) -> None:
  check_rank(name, x, (2,))
  check_same_shape("mask", mask, name, x)


def _check_rewards(rewards, values) -> None:
  check_rank("rewards", rewards, (1,))
  check_dim("rewards", rewards, 0, "values", values, 0)


def _check_ce(policy_ce, ref_ce, mask) -> None:
  check_rank("policy_ce", policy_ce, (3,))
  check_rank("ref_ce", ref_ce, (2,))
  check_dim("ref_ce", ref_ce, 0, "policy_ce", policy_ce, 0)
  check_dim("ref_ce", ref_ce, 1, "policy_ce", policy_ce, 1)
  check_same_shape("mask", mask, "ref_ce", ref_ce)


def _check_fraction(name: str, value: float, upper: float) -> None:
  if not 0.0 <= value <= upper:
    raise ValueError(f"{name} must be in [0, {upper}], got {value!r}")


# ------------------------------------------------------------------- TD, GAE, λ-returns


@jax.jit
def td_errors(values, mask, *, gamma=1.0, initial_value=0.5, rewards=None):
  """TD errors (marginal value of each token), ``[B, S]`` float32.

  ``δ_t = γ·V_t − V_{t−1}`` with ``V_{t−1}`` the value at position ``t−1`` of the sequence (prompt
  positions included) and ``V_{−1} = initial_value`` at t = 0. With ``rewards`` (``[B]``, e.g. 1
  correct / 0 incorrect) the last valid token uses ``δ_T = R − V_T`` instead. Output × mask.

  Args:
    values: ``[B, S]`` V(s_t).
    mask: ``[B, S]`` response mask.
    gamma: discount γ.
    initial_value: V_{−1}, the value before the first token.
    rewards: optional ``[B]`` terminal rewards R.
  """
  _check_bxs_with_mask("values", values, mask)
  values_BxS = _f32(values)
  valid_BxS = _valid(mask)
  prev_BxS = jnp.concatenate(
      [jnp.full_like(values_BxS[:, :1], _f32(initial_value)), values_BxS[:, :-1]], axis=1)
  delta_BxS = _f32(gamma) * values_BxS - prev_BxS
  if rewards is not None:
    _check_rewards(rewards, values)
    positions_S = jnp.arange(values_BxS.shape[1])
    last_B = jnp.max(jnp.where(valid_BxS, positions_S[None, :], -1), axis=1)
    is_last_BxS = positions_S[None, :] == last_B[:, None]
    delta_BxS = jnp.where(is_last_BxS, _f32(rewards)[:, None] - values_BxS, delta_BxS)
  return jnp.where(valid_BxS, delta_BxS, 0.0)


@jax.jit
def gae_advantages(values, mask, *, gamma=1.0, lam=0.95, initial_value=0.5, rewards=None):
  """GAE advantages, ``[B, S]`` float32: ``A_T = δ_T``, ``A_t = δ_t + γλ·A_{t+1}`` for t < T.

  ``δ = td_errors(values, mask, gamma=gamma, initial_value=initial_value, rewards=rewards)``
  (already × mask). The recurrence runs over *positions*: ``A_t = δ_t·mask_t + γλ·A_{t+1}`` for
  every t with ``A_S = 0``. Right padding (t > T) contributes 0, so ``A_T = δ_T``; a hole inside
  the response contributes δ = 0 but still decays the sum by γλ per position. Output × mask
  (prompt positions and padding are 0). λ = 0 gives TD(0) (``A = δ``).
  """
  _check_bxs_with_mask("values", values, mask)
  delta_BxS = td_errors(values, mask, gamma=gamma, initial_value=initial_value, rewards=rewards)
  decay_BxS = jnp.full_like(delta_BxS, _f32(gamma) * _f32(lam))
  adv_BxS = _reverse_linear_recurrence(decay_BxS, delta_BxS, jnp.zeros_like(delta_BxS[:, 0]))
  return jnp.where(_valid(mask), adv_BxS, 0.0)


@jax.jit
def lambda_returns(values, rewards, mask, *, gamma=1.0, lam=0.95):
  """λ-return critic targets, ``[B, S]`` float32 (values under ``stop_gradient``).

  ``G_T = R``; for valid t < T, ``G_t = (1−λ)·γ·V_{t'} + λ·γ·G_{t'}`` where t' is the next
  position after t with mask = 1 (holes in the mask are skipped). Output × mask.

  Args:
    values: ``[B, S]`` V(s_t) (no gradient flows through the targets).
    rewards: ``[B]`` terminal rewards R.
    mask: ``[B, S]`` response mask.
  """
  _check_bxs_with_mask("values", values, mask)
  _check_rewards(rewards, values)
  values_BxS = lax.stop_gradient(_f32(values))
  valid_BxS = _valid(mask)
  rewards_B = _f32(rewards)
  gamma, lam = _f32(gamma), _f32(lam)
  # y_t = target a valid position just before t would get from positions ≥ t: y_S = R, then
  # y_t = (1−λ)γV_t + λγ·y_{t+1} at valid t, y_t = y_{t+1} at invalid t; G_t = y_{t+1}.
  decay_BxS = jnp.where(valid_BxS, lam * gamma, 1.0)
  inject_BxS = jnp.where(valid_BxS, (1.0 - lam) * gamma * values_BxS, 0.0)
  y_BxS = _reverse_linear_recurrence(decay_BxS, inject_BxS, rewards_B)
  returns_BxS = jnp.concatenate([y_BxS[:, 1:], rewards_B[:, None]], axis=1)
  return jnp.where(valid_BxS, returns_BxS, 0.0)


# ------------------------------------------------------------- exponential weights, EMA


@jax.jit
def exp_weights(advantages, mask, *, beta=1.0, min_weight=0.1, max_weight=3.0, mean=None,
                std=None):
  """AWR/IQL-style weights ``w = clip(exp(A_n/β), min_weight, max_weight)·mask``, float32.

  ``A_n = (A − μ)/(σ + 1e-8)`` over the valid tokens. μ, σ are the batch mean and std (Bessel's
  correction) over all valid entries unless both ``mean`` and ``std`` are given (e.g. the EMA
  state *before* this step's update). With ≤ 1 valid token and no external statistics, w = mask.

  Args:
    advantages: any shape, e.g. ``[B, S]`` or ``[B, S, n]``.
    mask: same shape as ``advantages``.
    mean, std: optional scalar external statistics (pass both or neither).
  """
  check_same_shape("mask", mask, "advantages", advantages)
  if (mean is None) != (std is None):
    raise ValueError(f"pass both mean and std or neither, got mean={mean!r}, std={std!r}")
  adv = _f32(advantages)
  valid = _valid(mask)
  if mean is None:
    mean, var, count = _masked_mean_var(adv, valid)
    std = jnp.sqrt(var)
    use_stats = count > 1.0
  else:
    mean, std, use_stats = _f32(mean), _f32(std), True
  adv_n = (adv - mean) / (std + _WHITEN_EPS)
  w = jnp.clip(jnp.exp(adv_n / _f32(beta)), _f32(min_weight), _f32(max_weight))
  return jnp.where(valid, jnp.where(use_stats, w, 1.0), 0.0)


class EMAStats(NamedTuple):
  """Running statistics for whitening (a pytree; saved in checkpoints).

  Attributes:
    mean: float32 scalar, initially 0.
    std: float32 scalar, initially 1.
    count: int32 scalar, number of updates applied so far (batches without any valid token are
      not counted).
  """
  mean: jax.Array
  std: jax.Array
  count: jax.Array


class Moments(NamedTuple):
  """Masked sums of a batch; add them across micro-batches / ``lax.psum`` them across devices.

  Attributes:
    sum: float32 scalar Σ x over valid entries.
    sumsq: float32 scalar Σ x² over valid entries.
    count: int32 scalar number of valid entries.
  """
  sum: jax.Array
  sumsq: jax.Array
  count: jax.Array


def ema_init() -> EMAStats:
  """The initial EMA state ``(mean=0, std=1, count=0)``."""
  return EMAStats(mean=jnp.zeros((), jnp.float32), std=jnp.ones((), jnp.float32),
                  count=jnp.zeros((), jnp.int32))


@jax.jit
def masked_moments(x, mask) -> Moments:
  """``Moments(sum, sumsq, count)`` of ``x`` over nonzero ``mask`` (any shape, same shapes)."""
  check_same_shape("mask", mask, "x", x)
  valid = _valid(mask)
  x_valid = jnp.where(valid, _f32(x), 0.0)
  return Moments(sum=jnp.sum(x_valid), sumsq=jnp.sum(jnp.square(x_valid)),
                 count=jnp.sum(valid, dtype=jnp.int32))


@jax.jit
def ema_update_from_moments(state: EMAStats, moments: Moments, *, momentum=0.1,
                            warmup_steps=10) -> EMAStats:
  """One EMA step from global (already all-reduced) ``Moments``.

  Batch statistics: ``mean = sum/count``, ``var = sumsq/count − mean²`` (population variance),
  ``std = sqrt(max(var, 1e-8))``. Then ``count += 1`` and, for both mean and std, during warm-up
  (``count ≤ warmup_steps`` after the increment) ``s = r·s + (1 − r)·batch`` with
  ``r = (count − 1)/warmup_steps`` (the first update takes the batch statistics), afterwards
  ``s = (1 − momentum)·s + momentum·batch``. A batch with ``count = 0`` returns ``state``
  unchanged (its step counter too).
  """
  count = _f32(moments.count)
  has_data = count > 0.0
  safe_count = jnp.maximum(count, 1.0)
  batch_mean = _f32(moments.sum) / safe_count
  batch_var = _f32(moments.sumsq) / safe_count - jnp.square(batch_mean)
  batch_std = jnp.sqrt(jnp.maximum(batch_var, _VAR_FLOOR))
  step = state.count + 1
  warmup = jnp.asarray(warmup_steps, jnp.int32)
  ramp = _f32(step - 1) / _f32(jnp.maximum(warmup, 1))
  keep = jnp.where(step <= warmup, ramp, 1.0 - _f32(momentum))  # weight of the old state
  new_mean = keep * state.mean + (1.0 - keep) * batch_mean
  new_std = keep * state.std + (1.0 - keep) * batch_std
  return EMAStats(mean=jnp.where(has_data, new_mean, state.mean),
                  std=jnp.where(has_data, new_std, state.std),
                  count=jnp.where(has_data, step, state.count).astype(jnp.int32))


@jax.jit
def ema_update(state: EMAStats, x, mask, *, momentum=0.1, warmup_steps=10) -> EMAStats:
  """``ema_update_from_moments(state, masked_moments(x, mask), …)`` for a single-device batch.

  Compute this step's weights with the state *before* the update, e.g.
  ``exp_weights(adv, mask, mean=state.mean, std=state.std)``.
  """
  return ema_update_from_moments(state, masked_moments(x, mask), momentum=momentum,
                                 warmup_steps=warmup_steps)


# --------------------------------------------------------------------------------- Rho-1


@functools.partial(jax.jit, static_argnames=("n_future",))
def future_valid(mask, n_future: int) -> jax.Array:
  """Validity of the per-term grid, ``[B, S, n]`` bool.

  ``valid[b, t, k] = (t+1+k ≤ S−1) and mask[b, t+1+k]``.
  """
  check_rank("mask", mask, (2,))
  return arrays.future_window(_valid(mask), n_future, False)


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
  keys_Mxn = _sortable_keys(_f32(x)).reshape(-1, n)
  valid_Mxn = _valid(valid).reshape(-1, n)
  keys_Mxn = jnp.where(valid_Mxn, keys_Mxn, jnp.uint32(0xFFFFFFFF))
  count_n = jnp.sum(valid_Mxn, axis=0, dtype=jnp.int32)
  index_n = _f32(q) * _f32(jnp.maximum(count_n - 1, 0))
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
  ref_BxSxn = arrays.future_window(_f32(ref_ce), n, 0.0, offset=0)
  policy_BxSxn = _f32(policy_ce)
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
  ref_BxSxn = arrays.future_window(_f32(ref_ce), n, 0.0, offset=0)
  score_BxSxn = jnp.abs(ref_BxSxn - _f32(policy_ce))
  threshold_n = per_head_quantile(score_BxSxn, valid_BxSxn, percentile / 100.0)
  w_BxSxn = jnp.where(score_BxSxn > threshold_n[None, None, :], score_BxSxn, 0.0) + _f32(alpha)
  w_BxSxn = jnp.where(valid_BxSxn, w_BxSxn, 0.0)
  if normalize:
    w_BxSxn = normalize_weights(w_BxSxn, valid_BxSxn)
  return w_BxSxn


# ------------------------------------------------------------- softmax over heads, normalise


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
  _check_bxs_with_mask("scores", scores, mask)
  valid_BxSxn = future_valid(mask, n_future)
  logits_BxSxn = arrays.future_window(_f32(scores), n_future, 0.0) / _f32(temperature)
  logits_BxSxn = jnp.where(valid_BxSxn, logits_BxSxn, -jnp.inf)
  max_BxS = jnp.max(logits_BxSxn, axis=-1, keepdims=True)
  max_BxS = jnp.where(jnp.isfinite(max_BxS), max_BxS, 0.0)
  exp_BxSxn = jnp.where(valid_BxSxn, jnp.exp(logits_BxSxn - max_BxS), 0.0)
  total_BxS = jnp.sum(exp_BxSxn, axis=-1, keepdims=True)
  return exp_BxSxn / jnp.where(total_BxS > 0.0, total_BxS, 1.0)


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
  w = _f32(w)
  valid = _valid(valid)
  mean, var, count = _masked_mean_var(w, valid)
  logits = jnp.where(valid, (w - mean) / (jnp.sqrt(var) + _WHITEN_EPS) / _f32(temperature), -jnp.inf)
  shift = jnp.where(count > 0.0, jnp.max(logits), 0.0)
  exp = jnp.where(valid, jnp.exp(logits - shift), 0.0)
  scaled = exp * (count / jnp.maximum(jnp.sum(exp), jnp.finfo(jnp.float32).tiny))
  clipped = jnp.where(valid, jnp.clip(scaled, _f32(eps), _f32(max_weight)), 0.0)
  return clipped * (jnp.maximum(count, 1.0) / jnp.maximum(jnp.sum(clipped),
                                                          jnp.finfo(jnp.float32).tiny))


# ------------------------------------------------------------------------------ statistics


@jax.jit
def td_stats(x, mask) -> dict[str, jax.Array]:
  """``{"mean", "std", "min", "max"}`` of ``x`` over the valid entries (float32 scalars).

  Any shape (TD errors, advantages, weights); std with Bessel's correction; all 0 with no valid
  entry, std 0 with one.
  """
  check_same_shape("mask", mask, "x", x)
  x = _f32(x)
  valid = _valid(mask)
  mean, var, count = _masked_mean_var(x, valid)
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
  w = _f32(w)
  valid = _valid(mask)
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
  valid = _valid(mask)
  returns = _f32(returns)
  _, var_ret, count = _masked_mean_var(returns, valid)
  _, var_res, _ = _masked_mean_var(returns - _f32(values), valid)
  defined = (count > 1.0) & (var_ret > 0.0)
  return jnp.where(defined, 1.0 - var_res / jnp.where(defined, var_ret, 1.0), 0.0)


@jax.jit
def selection_ratio_per_head(w, valid):
  """Fraction of valid terms with ``w > 0`` per head (Rho-1 logging), ``[n]`` float32.

  ``w`` and ``valid`` are ``[B, S, n]``; a head without valid terms gives 0.
  """
  check_rank("w", w, (3,))
  check_same_shape("valid", valid, "w", w)
  valid = _valid(valid)
  selected_n = jnp.sum(valid & (_f32(w) > 0.0), axis=(0, 1), dtype=jnp.float32)
  return selected_n / jnp.maximum(jnp.sum(valid, axis=(0, 1), dtype=jnp.float32), 1.0)


@functools.partial(jax.jit, static_argnames=("bins",))
def weight_histogram(w, mask, *, upper, bins: int = 30):
  """Counts of the valid weights in ``bins`` equal buckets over ``[0, upper]``, ``[bins]`` float32.

  Bucket ``i`` holds ``i·upper/bins ≤ w < (i+1)·upper/bins``; the last bucket also holds every
  ``w ≥ upper`` and the first every ``w < 0``, so the counts sum to the number of valid entries.
  Any shape (``w`` and ``mask`` alike). ``upper`` is traced (e.g. the clip bound ``w_max``).
  """
  check_same_shape("mask", mask, "w", w)
  index = jnp.clip(jnp.floor(_f32(w) * (bins / upper)), 0, bins - 1).astype(jnp.int32)
  return jnp.zeros(bins, jnp.float32).at[index.reshape(-1)].add(
      _valid(mask).reshape(-1).astype(jnp.float32))
