"""Tests for wmtp_jax.objectives.critic: the reference's value diagnostics against loops, and
the λ-return term as (L_pos + L_neg) / 2 of per-sequence means."""

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax import weighting
from wmtp_jax.config import common as config_lib
from wmtp_jax.objectives import critic

SIMPLE = dict(rtol=1e-5, atol=1e-5)


def _batch(rng, rows=5, seq_len=9):
  values = rng.normal(size=(rows, seq_len)).astype(np.float32)
  mask = (rng.uniform(size=(rows, seq_len)) < 0.7).astype(np.int32)
  mask[1] = 0  # no response token: left out everywhere
  mask[2] = 0
  mask[2, 3:5] = 1  # two tokens: counted in the mean and variance, not in the correlation
  values[1] = 1e30
  return values, mask


def test_sequence_value_stats_match_loop():
  values, mask = _batch(np.random.default_rng(0))
  got = critic.sequence_value_stats(values, mask)
  means, variances, corrs = [], [], []
  for b in range(values.shape[0]):
    ts = [t for t in range(values.shape[1]) if mask[b, t]]
    if not ts:
      continue
    v = np.asarray([float(values[b, t]) for t in ts])
    means.append(v.mean())
    variances.append(((v - v.mean())**2).mean())
    if len(ts) >= 3:  # the reference's compute_position_correlation
      p = np.asarray(ts, float)
      dv, dp = v - v.mean(), p - p.mean()
      corrs.append((dv * dp).sum() / (np.linalg.norm(dv) * np.linalg.norm(dp) + 1e-8))
  np.testing.assert_allclose(got["mean"], np.mean(means), **SIMPLE)
  np.testing.assert_allclose(got["seq_variance"], np.mean(variances), **SIMPLE)
  np.testing.assert_allclose(got["position_corr"], np.mean(corrs), **SIMPLE)
  ramp = np.tile(np.arange(6, dtype=np.float32), (2, 1))
  np.testing.assert_allclose(critic.sequence_value_stats(ramp, np.ones((2, 6)))["position_corr"],
                             1.0, **SIMPLE)
  empty = critic.sequence_value_stats(values, np.zeros_like(mask))
  assert all(float(v) == 0.0 for v in empty.values())


def test_lambda_term_is_the_mean_of_both_sides():
  config = config_lib.load("critic", "tiny")
  config.critic_loss.update(pairwise_coef=0.0, lambda_coef=1.0, mc_coef=0.0, lm_coef=0.0)
  config.model.value_inputs = "hidden"
  objective = critic.Critic(config)
  rng = np.random.default_rng(1)
  b, s = 3, 8
  values = rng.normal(size=(2 * b, s)).astype(np.float32)
  tokens = rng.integers(5, 100, size=(2 * b, s)).astype(np.int32)
  labels = tokens.copy()
  labels[:, :2] = -100
  attention = np.ones((2 * b, s), np.int32)
  attention[0, 6:] = 0  # a shorter correct row
  labels[0, 6:] = -100
  batch = {f"{side}_{k}": jnp.asarray(v[rows]) for side, rows in (("pos", slice(0, b)),
                                                                  ("neg", slice(b, None)))
           for k, v in (("tokens", tokens), ("labels", labels), ("attention_mask", attention))}
  apply = lambda params, *args, **kwargs: jnp.asarray(values)
  norms = objective.normalizers(batch)
  loss, (metrics, _) = objective.loss(None, apply, {}, batch, norms, {}, jax.random.key(0))
  mask = (labels != -100) & (attention != 0)
  rewards = np.asarray([1.0] * b + [0.0] * b, np.float32)
  returns = np.asarray(weighting.lambda_returns(values, rewards, mask, gamma=1.0, lam=0.95))
  sides = []
  for rows in (range(b), range(b, 2 * b)):
    per_row = [np.mean([(values[r, t] - returns[r, t])**2 for t in range(s) if mask[r, t]])
               for r in rows]
    sides.append(np.mean(per_row))
  np.testing.assert_allclose(metrics["lambda_loss"], (sides[0] + sides[1]) / 2, **SIMPLE)
  np.testing.assert_allclose(loss, (sides[0] + sides[1]) / 2, **SIMPLE)
