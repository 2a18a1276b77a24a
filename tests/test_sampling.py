"""Sampling (``wmtp_jax.decoding.sampling``): seeded, the nucleus filter against numpy and against a
token-by-token loop, and speculative sampling that keeps only the most likely token gives the
greedy tokens."""

import jax.numpy as jnp
import numpy as np

from decoding_helpers import EOS, MTP_CFG, heads_agree, mtp_model, random_prompts, shared_generator
from wmtp_jax.decoding.sampling import Sampling, warp_probs


def test_sampling_is_seeded_and_top_p_filters():
  """Plain sampling runs in tests/test_eval.py (evaluate_problems with temperature)."""
  model, params = mtp_model()
  prompts = random_prompts(3, [8, 12])
  generator, speculative = shared_generator(), shared_generator(2)
  sampling = Sampling(temperature=1.0, top_p=0.9)
  kwargs = dict(max_new_tokens=20, eos_id=EOS, batch_size=4, buckets=(16, 32))
  agree = heads_agree(params)
  a = speculative(params, prompts, sampling=sampling, seed=1, **kwargs)
  b = speculative(params, prompts, sampling=sampling, seed=1, **kwargs)
  c = speculative(params, prompts, sampling=sampling, seed=2, **kwargs)
  assert a.tokens == b.tokens and a.tokens != c.tokens
  assert all(0 <= t < MTP_CFG.vocab_size for row in a.tokens for t in row)
  # warp_probs against a direct numpy nucleus filter.
  logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 3
  got = np.asarray(warp_probs(jnp.asarray(logits), Sampling(0.7, 0.8)))
  for row, probs in zip(logits, got):
    p = np.exp(row / 0.7 - np.max(row / 0.7))
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[:np.searchsorted(np.cumsum(p[order]), 0.8) + 1]
    want = np.zeros_like(p)
    want[keep] = p[keep] / p[keep].sum()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
  # Speculative sampling: near-greedy sampling (top-p keeps only the most likely token) goes
  # through the acceptance ratios and the residual distribution and must give the greedy tokens.
  near_greedy = Sampling(temperature=1.0, top_p=1e-9)
  got = speculative(agree, prompts, sampling=near_greedy, **kwargs)
  assert got.stats["compiles"] == 0  # temperature and top_p are not compiled in
  assert got.tokens == generator(agree, prompts, **kwargs).tokens
  assert got.stats["mean_accepted_length"] > 1.3


def _nucleus_by_loop(row, temperature, top_p):
  """Top-p (the reference's ``top_p=0.95``, HF's warper): softmax at ``temperature``, then walk the
  tokens from the most likely, keeping each until the kept mass reaches ``top_p``; renormalise."""
  scaled = [x / temperature for x in row]
  top = max(scaled)
  weights = [float(np.exp(x - top)) for x in scaled]
  total = sum(weights)
  probs = [w / total for w in weights]
  kept, mass = [], 0.0
  for token in sorted(range(len(probs)), key=lambda t: -probs[t]):
    if mass >= top_p:
      break
    kept.append(token)
    mass += probs[token]
  out = [0.0] * len(probs)
  for token in kept:
    out[token] = probs[token] / mass
  return out


def test_top_p_against_a_loop_and_draws_stay_in_the_nucleus():
  import jax  # pylint: disable=import-outside-toplevel
  from wmtp_jax.decoding.sampling import sample_token  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  logits = (rng.normal(size=(6, 40)) * rng.uniform(0.5, 4, size=(6, 1))).astype(np.float32)
  for temperature in (0.2, 0.8, 1.0):
    for top_p in (0.5, 0.95, 1.0):
      got = np.asarray(warp_probs(jnp.asarray(logits), Sampling(temperature, top_p)))
      for row, probs in zip(logits, got):
        np.testing.assert_allclose(probs, _nucleus_by_loop(row.tolist(), temperature, top_p),
                                   rtol=1e-5, atol=1e-6)
  knobs = Sampling(0.8, 0.95)
  allowed = np.asarray(warp_probs(jnp.asarray(logits), knobs)) > 0
  draws = np.asarray(jax.vmap(lambda k: sample_token(k, jnp.asarray(logits), knobs))(
      jax.random.split(jax.random.key(0), 200)))
  assert draws.shape == (200, 6)
  for row in range(6):
    assert allowed[row, draws[:, row]].all()
