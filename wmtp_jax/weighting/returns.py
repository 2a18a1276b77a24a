"""TD errors, GAE advantages and λ-returns, ``[B, S]`` (DESIGN §3; conventions in the package
docstring), on top of one reverse linear recurrence ``x_t = a_t·x_{t+1} + b_t``."""

import jax
import jax.numpy as jnp
from jax import lax

from wmtp_jax.arrays import check_dim, check_rank
from wmtp_jax.weighting.common import bool_mask, check_bxs_with_mask, f32


def _reverse_recurrence_scan(a_BxS, b_BxS, init_B):
  """``_reverse_linear_recurrence`` as a sequential ``lax.scan`` over positions (CPU)."""
  def step(x_next_B, ab_B):
    x_B = ab_B[0] * x_next_B + ab_B[1]
    return x_B, x_B

  _, x_SxB = lax.scan(step, init_B, (a_BxS.T, b_BxS.T), reverse=True)
  return x_SxB.T


def _reverse_recurrence_assoc(a_BxS, b_BxS, init_B):
  """``_reverse_linear_recurrence`` as a log-depth ``lax.associative_scan`` (GPU/TPU)."""
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


def _check_rewards(rewards, values) -> None:
  check_rank("rewards", rewards, (1,))
  check_dim("rewards", rewards, 0, "values", values, 0)


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
  check_bxs_with_mask("values", values, mask)
  values_BxS = f32(values)
  valid_BxS = bool_mask(mask)
  prev_BxS = jnp.concatenate(
      [jnp.full_like(values_BxS[:, :1], f32(initial_value)), values_BxS[:, :-1]], axis=1)
  delta_BxS = f32(gamma) * values_BxS - prev_BxS
  if rewards is not None:
    _check_rewards(rewards, values)
    positions_S = jnp.arange(values_BxS.shape[1])
    last_B = jnp.max(jnp.where(valid_BxS, positions_S[None, :], -1), axis=1)
    is_last_BxS = positions_S[None, :] == last_B[:, None]
    delta_BxS = jnp.where(is_last_BxS, f32(rewards)[:, None] - values_BxS, delta_BxS)
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
  check_bxs_with_mask("values", values, mask)
  delta_BxS = td_errors(values, mask, gamma=gamma, initial_value=initial_value, rewards=rewards)
  decay_BxS = jnp.full_like(delta_BxS, f32(gamma) * f32(lam))
  adv_BxS = _reverse_linear_recurrence(decay_BxS, delta_BxS, jnp.zeros_like(delta_BxS[:, 0]))
  return jnp.where(bool_mask(mask), adv_BxS, 0.0)


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
  check_bxs_with_mask("values", values, mask)
  _check_rewards(rewards, values)
  values_BxS = lax.stop_gradient(f32(values))
  valid_BxS = bool_mask(mask)
  rewards_B = f32(rewards)
  gamma, lam = f32(gamma), f32(lam)
  # y_t = target a valid position just before t would get from positions ≥ t: y_S = R, then
  # y_t = (1−λ)γV_t + λγ·y_{t+1} at valid t, y_t = y_{t+1} at invalid t; G_t = y_{t+1}.
  decay_BxS = jnp.where(valid_BxS, lam * gamma, 1.0)
  inject_BxS = jnp.where(valid_BxS, (1.0 - lam) * gamma * values_BxS, 0.0)
  y_BxS = _reverse_linear_recurrence(decay_BxS, inject_BxS, rewards_B)
  returns_BxS = jnp.concatenate([y_BxS[:, 1:], rewards_B[:, None]], axis=1)
  return jnp.where(valid_BxS, returns_BxS, 0.0)
