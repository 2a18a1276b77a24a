"""Whitened exponential weights and the running statistics they use (DESIGN §3): ``exp_weights``,
the EMA state (``EMAStats``, ``ema_init``, ``ema_update``, ``ema_update_from_moments``) and the
masked ``Moments`` that are summed across micro-batches and devices."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from wmtp_jax.arrays import check_same_shape
from wmtp_jax.weighting.common import WHITEN_EPS, bool_mask, f32, masked_mean_var

_VAR_FLOOR = 1e-8  # EMA: std = sqrt(max(var, 1e-8))


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
  adv = f32(advantages)
  valid = bool_mask(mask)
  if mean is None:
    mean, var, count = masked_mean_var(adv, valid)
    std = jnp.sqrt(var)
    use_stats = count > 1.0
  else:
    mean, std, use_stats = f32(mean), f32(std), True
  adv_n = (adv - mean) / (std + WHITEN_EPS)
  w = jnp.clip(jnp.exp(adv_n / f32(beta)), f32(min_weight), f32(max_weight))
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
  valid = bool_mask(mask)
  x_valid = jnp.where(valid, f32(x), 0.0)
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
  count = f32(moments.count)
  has_data = count > 0.0
  safe_count = jnp.maximum(count, 1.0)
  batch_mean = f32(moments.sum) / safe_count
  batch_var = f32(moments.sumsq) / safe_count - jnp.square(batch_mean)
  batch_std = jnp.sqrt(jnp.maximum(batch_var, _VAR_FLOOR))
  step = state.count + 1
  warmup = jnp.asarray(warmup_steps, jnp.int32)
  ramp = f32(step - 1) / f32(jnp.maximum(warmup, 1))
  keep = jnp.where(step <= warmup, ramp, 1.0 - f32(momentum))  # weight of the old state
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
