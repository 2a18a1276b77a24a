"""Parity tests for wmtp_jax.weighting.returns (TD errors, GAE, λ-returns) against the loop
references of weighting_refs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from weighting_refs import COMPOSITE, SHAPES, SIMPLE, gae_ref, make_case, td_ref

from wmtp_jax import weighting as W
from wmtp_jax.weighting import returns


def lambda_ref(values, rewards, mask, gamma, lam):
  out = np.zeros(values.shape)
  for b in range(values.shape[0]):
    positions = [t for t in range(values.shape[1]) if mask[b, t]]
    for i in range(len(positions) - 1, -1, -1):
      t = positions[i]
      if i == len(positions) - 1:
        out[b, t] = float(rewards[b])
      else:
        nxt = positions[i + 1]
        out[b, t] = (1 - lam) * gamma * float(values[b, nxt]) + lam * gamma * out[b, nxt]
  return out


@pytest.mark.parametrize("b,s,holes", SHAPES)
@pytest.mark.parametrize("with_rewards", [False, True])
def test_td_errors(b, s, holes, with_rewards):
  values, mask, rewards = make_case(0, b, s, holes)
  rewards = rewards if with_rewards else None
  got = W.td_errors(values, mask, gamma=0.97, initial_value=0.3, rewards=rewards)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, td_ref(values, mask, 0.97, 0.3, rewards), **SIMPLE)


@pytest.mark.parametrize("b,s,holes", SHAPES)
@pytest.mark.parametrize("with_rewards", [False, True])
def test_gae_advantages(b, s, holes, with_rewards):
  values, mask, rewards = make_case(1, b, s, holes)
  rewards = rewards if with_rewards else None
  got = W.gae_advantages(values, mask, gamma=0.99, lam=0.9, initial_value=0.5, rewards=rewards)
  np.testing.assert_allclose(got, gae_ref(values, mask, 0.99, 0.9, 0.5, rewards), **COMPOSITE)


def test_gae_defaults_and_td0():
  values, mask, _ = make_case(2, 6, 13, False)
  np.testing.assert_allclose(W.gae_advantages(values, mask),
                             gae_ref(values, mask, 1.0, 0.95, 0.5), **COMPOSITE)
  np.testing.assert_allclose(W.gae_advantages(values, mask, lam=0.0), W.td_errors(values, mask),
                             **SIMPLE)


def test_reverse_recurrence_associative_path_matches_loop():
  # CPU runs the lax.scan path; GPU/TPU run the associative_scan path: check it here too.
  rng = np.random.default_rng(3)
  a = rng.uniform(0.0, 1.0, (3, 17)).astype(np.float32)
  b = rng.normal(size=(3, 17)).astype(np.float32)
  init = rng.normal(size=3).astype(np.float32)
  want = np.zeros((3, 17))
  for row in range(3):
    x = float(init[row])
    for t in range(16, -1, -1):
      x = float(a[row, t]) * x + float(b[row, t])
      want[row, t] = x
  for impl in (returns._reverse_recurrence_assoc, returns._reverse_recurrence_scan):
    np.testing.assert_allclose(jax.jit(impl)(a, b, init), want, **COMPOSITE)


@pytest.mark.parametrize("b,s,holes", SHAPES)
def test_lambda_returns(b, s, holes):
  values, mask, rewards = make_case(4, b, s, holes)
  got = W.lambda_returns(values, rewards, mask, gamma=0.98, lam=0.8)
  np.testing.assert_allclose(got, lambda_ref(values, rewards, mask, 0.98, 0.8), **COMPOSITE)


def test_lambda_returns_stop_gradient():
  values, mask, rewards = make_case(5, 6, 13, True)
  grad = jax.grad(lambda v: jnp.sum(W.lambda_returns(v, rewards, mask)))(jnp.asarray(values))
  np.testing.assert_array_equal(grad, np.zeros_like(values))
