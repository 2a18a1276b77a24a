"""Critic / value losses (DESIGN §3): pairwise ranking, λ-return, Monte-Carlo and clipped value
losses. Values, targets and masks are ``[B, S]`` (the package legend, ``wmtp_jax`` docstring);
``V[b, t]`` is the value of the state after reading ``x_0 … x_t``. Masks are cast to float32 and
treated as 0/1. Everything is computed in float32.
"""

import jax
import jax.numpy as jnp

from wmtp_jax.arrays import check_dim, check_rank, check_same_shape


def _masked_sum(x, mask, axis):
  """``(Σ x·m, Σ m)`` over ``axis`` in float32; masked-out entries are excluded by ``where``."""
  mask = jnp.asarray(mask, jnp.float32)
  total = jnp.where(mask > 0, jnp.asarray(x, jnp.float32) * mask, 0.0).sum(axis)
  return total, mask.sum(axis)


def _masked_mean(x_BxS, mask_BxS):
  """``Σ x·m / Σ m`` over all tokens (0 when no token is masked in)."""
  total, count = _masked_sum(x_BxS, mask_BxS, None)
  return total / jnp.maximum(count, 1.0)


def _check_values(values, **same_shape):
  """``values`` must be ``[B, S]`` and every keyword array must have its shape."""
  check_rank("values", values, (2,))
  for name, x in same_shape.items():
    check_same_shape(name, x, "values", values)


def _sequence_mean(values_BxS, mask_BxS):
  """Per-row masked mean ``Σ_t V_t·m_t / (Σ_t m_t + 1e-8)`` (DESIGN §3), shape ``[B]``."""
  total_B, count_B = _masked_sum(values_BxS, mask_BxS, -1)
  return total_B / (count_B + 1e-8)


def pairwise_ranking_loss(values_pos, mask_pos, values_neg, mask_neg) -> dict:
  """Bradley–Terry ranking loss between paired correct (pos) and incorrect (neg) sequences.

  ``v̄ = Σ_t V_t·mask_t / (Σ_t mask_t + 1e-8)`` per sequence; ``loss = -mean_b log σ(v̄_pos -
  v̄_neg)`` (via ``log_sigmoid``); ``accuracy = mean_b 1[v̄_pos > v̄_neg]``.

  Args:
    values_pos, mask_pos: ``[B, S_pos]``. values_neg, mask_neg: ``[B, S_neg]`` (row b of pos and
      neg form a pair; the lengths may differ).

  Returns:
    Dict of float32 scalars ``loss``, ``accuracy`` and ``margin`` (``mean_b v̄_pos - v̄_neg``).
  """
  check_rank("values_pos", values_pos, (2,))
  check_same_shape("mask_pos", mask_pos, "values_pos", values_pos)
  check_rank("values_neg", values_neg, (2,))
  check_same_shape("mask_neg", mask_neg, "values_neg", values_neg)
  check_dim("values_pos", values_pos, 0, "values_neg", values_neg, 0)
  diff_B = _sequence_mean(values_pos, mask_pos) - _sequence_mean(values_neg, mask_neg)
  return {
      "loss": -jnp.mean(jax.nn.log_sigmoid(diff_B)),
      "accuracy": jnp.mean((diff_B > 0).astype(jnp.float32)),
      "margin": jnp.mean(diff_B),
  }


def _row_mean(loss_BxS, mask_BxS):
  """Per-row mean of ``loss`` over masked tokens, then the mean over the rows that have one (0
  if none): every sequence weighs the same, whatever its length."""
  total_B, count_B = _masked_sum(loss_BxS, mask_BxS, -1)
  has_B = count_B > 0
  row_B = jnp.where(has_B, total_B / jnp.maximum(count_B, 1.0), 0.0)
  return row_B.sum() / jnp.maximum(has_B.sum(), 1).astype(jnp.float32)


def lambda_return_value_loss(values, targets, mask, *, kind: str = "mse",
                             huber_delta: float = 0.5):
  """MSE or Huber loss of values against λ-return targets: per-sequence mean, then the mean over
  sequences (as the reference's ``compute_lambda_value_loss``; long sequences do not dominate).

  ``mse``: ``(V - G)²``; ``huber``: PyTorch's ``smooth_l1_loss(beta=δ)``, ``0.5·e²/δ`` if
  ``|e| < δ`` else ``|e| - 0.5·δ`` with ``e = V - G`` (the reference's choice; it is the classic
  Huber loss divided by δ). Targets (``wmtp_jax.weighting.lambda_returns``) are wrapped in
  ``stop_gradient``. Rows without a masked token are left out. The reference averages pos and
  neg sequences as ``(L_pos + L_neg) / 2``: call this once per side.

  Args:
    values, targets, mask: ``[B, S]``.
    kind: ``"mse"`` or ``"huber"``.
    huber_delta: δ (``beta``) of the Huber loss, > 0.

  Returns:
    Float32 scalar (0 if no token is masked in).
  """
  _check_values(values, targets=targets, mask=mask)
  targets_BxS = jax.lax.stop_gradient(jnp.asarray(targets, jnp.float32))
  error_BxS = jnp.asarray(values, jnp.float32) - targets_BxS
  if kind == "mse":
    loss_BxS = error_BxS**2
  elif kind == "huber":
    if not huber_delta > 0:
      raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
    abs_BxS = jnp.abs(error_BxS)
    loss_BxS = jnp.where(abs_BxS < huber_delta, 0.5 * error_BxS**2 / huber_delta,
                         abs_BxS - 0.5 * huber_delta)
  else:
    raise ValueError(f"kind must be 'mse' or 'huber', got {kind!r}")
  return _row_mean(loss_BxS, mask)


def mc_value_loss(values, rewards, mask):
  """Monte-Carlo value loss: per-row mean of ``(V_t - R)²`` over masked tokens, mean over rows.

  Rows without any masked token are excluded from the mean over rows (0 if there are none).

  Args:
    values, mask: ``[B, S]``.
    rewards: ``[B]`` sequence reward R (e.g. 1 correct, 0 incorrect).

  Returns:
    Float32 scalar.
  """
  _check_values(values, mask=mask)
  check_rank("rewards", rewards, (1,))
  check_dim("rewards", rewards, 0, "values", values, 0)
  error_BxS = jnp.asarray(values, jnp.float32) - jnp.asarray(rewards, jnp.float32)[:, None]
  return _row_mean(error_BxS**2, mask)


def clipped_value_loss(values, old_values, returns, mask, *, clip_range: float = 0.2):
  """PPO-style clipped value loss (shared-head variant, DESIGN §3).

  ``0.5 · mean_masked max((V - G)², (V_old + clip(V - V_old, -c, c) - G)²)``, with the mean over
  masked tokens. ``old_values`` and ``returns`` are constants (``stop_gradient``).

  Args:
    values, old_values, returns, mask: ``[B, S]``.
    clip_range: c.

  Returns:
    Float32 scalar (0 if no token is masked in).
  """
  _check_values(values, old_values=old_values, returns=returns, mask=mask)
  values_BxS = jnp.asarray(values, jnp.float32)
  old_BxS = jax.lax.stop_gradient(jnp.asarray(old_values, jnp.float32))
  returns_BxS = jax.lax.stop_gradient(jnp.asarray(returns, jnp.float32))
  clipped_BxS = old_BxS + jnp.clip(values_BxS - old_BxS, -clip_range, clip_range)
  loss_BxS = jnp.maximum((values_BxS - returns_BxS)**2, (clipped_BxS - returns_BxS)**2)
  return 0.5 * _masked_mean(loss_BxS, mask)
