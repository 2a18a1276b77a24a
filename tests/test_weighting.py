"""Tests across the wmtp_jax.weighting package: argument errors, float32 outputs for bf16 inputs,
and a GAE → exp weights → EMA step under an outer ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from weighting_refs import COMPOSITE, exp_weights_ref, gae_ref, make_case, make_ce

from wmtp_jax import weighting as W


def test_bad_inputs_name_arguments_and_shapes():
  v = np.zeros((2, 5), np.float32)
  with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*values shape \(2, 5\)"):
    W.td_errors(v, np.ones((2, 4)))
  with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*values shape \(2, 5\)"):
    W.gae_advantages(v, np.ones((2, 4)))
  with pytest.raises(ValueError, match=r"rewards shape \(3,\).*values shape \(2, 5\)"):
    W.lambda_returns(v, np.ones(3), np.ones((2, 5)))
  with pytest.raises(ValueError, match=r"policy_ce must have rank 3, got shape \(2, 5\)"):
    W.rho1_weights(v, v, v)
  with pytest.raises(ValueError, match=r"ref_ce shape \(2, 4\).*policy_ce shape \(2, 5, 3\)"):
    W.rho1_weights(np.zeros((2, 5, 3)), np.zeros((2, 4)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*ref_ce shape \(2, 5\)"):
    W.rho1_continuous_weights(np.zeros((2, 5, 3)), v, np.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"mask shape \(2, 5, 1\).*advantages shape \(2, 5\)"):
    W.exp_weights(v, np.ones((2, 5, 1)))
  with pytest.raises(ValueError, match="unknown Rho-1 mode 'lowest'"):
    W.rho1_weights(np.zeros((2, 5, 3)), v, v, mode="lowest")
  with pytest.raises(ValueError, match="k_percent must be in"):
    W.rho1_weights(np.zeros((2, 5, 3)), v, v, k_percent=1.5)
  with pytest.raises(ValueError, match="both mean and std"):
    W.exp_weights(v, v, mean=0.0)
  with pytest.raises(ValueError, match=r"valid shape \(2, 5\).*w shape \(2, 5, 3\)"):
    W.selection_ratio_per_head(np.zeros((2, 5, 3)), v)


def test_bf16_inputs_give_float32_outputs():
  values, mask, rewards = make_case(18, 3, 8, False)
  v16, r16 = jnp.asarray(values, jnp.bfloat16), jnp.asarray(rewards, jnp.bfloat16)
  p16 = jnp.asarray(make_ce(18, 3, 8, 2, False)[0], jnp.bfloat16)
  valid = W.future_valid(mask, 2)
  outputs = [
      W.td_errors(v16, mask, rewards=r16), W.gae_advantages(v16, mask),
      W.lambda_returns(v16, r16, mask), W.exp_weights(v16, mask),
      W.exp_weights(v16, mask, mean=jnp.bfloat16(0.5), std=jnp.bfloat16(1.0)),
      W.rho1_weights(p16, v16, mask), W.rho1_continuous_weights(p16, v16, mask),
      W.softmax_head_weights(v16, mask, 2), W.normalize_weights(p16, valid),
      W.explained_variance(v16, v16, mask), W.selection_ratio_per_head(p16, valid),
      W.per_head_quantile(p16, valid, 0.5), *W.ema_update(W.ema_init(), v16, mask)[:2],
      *W.masked_moments(v16, mask)[:2], *W.weight_stats(p16, valid).values()]
  assert all(out.dtype == jnp.float32 for out in outputs), [out.dtype for out in outputs]


def test_under_outer_jit_with_batch_one():
  values, mask, rewards = make_case(19, 1, 9, False)
  mask[0, 3:7] = True

  @jax.jit
  def step(values, mask, rewards, state):
    adv = W.gae_advantages(values, mask, rewards=rewards)
    w = W.exp_weights(adv, mask, mean=state.mean, std=state.std)
    return adv, w, W.ema_update(state, adv, mask)

  adv, w, state = step(values, mask, rewards, W.ema_init())
  want_adv = gae_ref(values, mask, 1.0, 0.95, 0.5, rewards)
  np.testing.assert_allclose(adv, want_adv, **COMPOSITE)
  np.testing.assert_allclose(w, exp_weights_ref(want_adv, mask, 1.0, 0.1, 3.0, 0.0, 1.0),
                             **COMPOSITE)
  assert int(state.count) == 1
