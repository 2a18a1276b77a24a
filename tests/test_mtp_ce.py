"""Tests for wmtp_jax.losses.mtp_ce (weighted MTP cross-entropy, from logits and from hidden
states) against a plain numpy loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from error_match import raises

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.losses import (mtp_cross_entropy, mtp_cross_entropy_from_hidden, mtp_targets,
                             reduce_per_head, token_ce)
from wmtp_jax.losses.blockwise_ce import blockwise_token_ce

SIMPLE = dict(rtol=1e-5, atol=1e-5)
N_HEADS, VOCAB, DIM = 4, 13, 6
# Neither divides the sizes below: V = 13, and B·S·n in {144, 24, 8}.
BLOCKS = dict(vocab_block=5, token_block=7)


def _batch(case: str, rng):
  """labels, attention_mask [B, S] for a named layout."""
  if case == "mixed":  # prompt, right padding, an all-prompt row, attention 0 on a labelled token
    labels = rng.integers(0, VOCAB, size=(4, 9))
    attention_mask = np.ones((4, 9), np.int32)
    labels[0, :3] = IGNORE_INDEX
    labels[1, :2] = IGNORE_INDEX
    labels[1, 6:] = IGNORE_INDEX
    attention_mask[1, 6:] = 0
    labels[2] = IGNORE_INDEX
    labels[3, :1] = IGNORE_INDEX
    attention_mask[3, 5] = 0
  elif case == "short":  # S = 3: heads 2 and 3 have no valid target at all
    labels = rng.integers(0, VOCAB, size=(2, 3))
    attention_mask = np.ones((2, 3), np.int32)
    labels[0, 0] = IGNORE_INDEX
  elif case == "one":  # S = 1: nothing is valid
    labels = rng.integers(0, VOCAB, size=(2, 1))
    attention_mask = np.ones((2, 1), np.int32)
  else:
    raise ValueError(case)
  return labels, attention_mask


def _weights(kind: str, shape_bs, rng):
  if kind == "none":
    return None
  if kind == "target":
    return rng.uniform(0.0, 3.0, size=shape_bs).astype(np.float32)
  return rng.uniform(0.0, 3.0, size=(*shape_bs, N_HEADS)).astype(np.float32)


def reference_mtp(logits, labels, attention_mask, weights):
  """Loop over b, t, k with a float64 numpy log-softmax, exactly as written in DESIGN §2."""
  batch, seq_len, n, _ = logits.shape
  weighted, unweighted, count = np.zeros(n), np.zeros(n), np.zeros(n)
  for b in range(batch):
    for t in range(seq_len):
      for k in range(n):
        j = t + 1 + k
        if j >= seq_len or labels[b, j] == IGNORE_INDEX or attention_mask[b, j] == 0:
          continue
        row = logits[b, t, k].astype(np.float64)
        log_probs = row - row.max() - np.log(np.sum(np.exp(row - row.max())))
        ce = -log_probs[labels[b, j]]
        if weights is None:
          w = 1.0
        elif weights.ndim == 2:
          w = weights[b, j]
        else:
          w = weights[b, t, k]
        weighted[k] += w * ce
        unweighted[k] += ce
        count[k] += 1
  per_head = weighted / np.maximum(count, 1)
  per_head_unweighted = unweighted / np.maximum(count, 1)
  has = count > 0
  return {
      "loss": per_head[has].mean() if has.any() else 0.0,
      "unweighted": per_head_unweighted[has].mean() if has.any() else 0.0,
      "per_head": per_head,
      "per_head_unweighted": per_head_unweighted,
      "n_valid_per_head": count,
  }


def _hidden_inputs(case, rng):
  labels, attention_mask = _batch(case, rng)
  hidden = rng.normal(size=(*labels.shape, N_HEADS, DIM)).astype(np.float32)
  unembedding = rng.normal(size=(DIM, VOCAB)).astype(np.float32)
  return hidden, unembedding, labels, attention_mask


def _plain_from_hidden(hidden, unembedding, labels, attention_mask, weights):
  logits = jnp.einsum("bsnd,dv->bsnv", hidden, unembedding, preferred_element_type=jnp.float32)
  return mtp_cross_entropy(logits, labels, attention_mask, weights)


def _efficient(hidden, unembedding, labels, attention_mask, weights):
  return mtp_cross_entropy_from_hidden(hidden, unembedding, labels, attention_mask, weights,
                                       **BLOCKS)


def _scalar(out):
  """A combination of all float outputs, so gradients exercise a general cotangent."""
  per_head_coeffs = jnp.arange(1.0, N_HEADS + 1.0)
  return (out["loss"] + 0.3 * out["unweighted"] + jnp.dot(per_head_coeffs, out["per_head"])
          - 0.7 * jnp.dot(per_head_coeffs, out["per_head_unweighted"]))


@pytest.mark.parametrize("weight_kind", ["none", "target", "term"])
@pytest.mark.parametrize("case", ["mixed", "short", "one"])
def test_mtp_cross_entropy_matches_loop(case, weight_kind):
  rng = np.random.default_rng(0)
  labels, attention_mask = _batch(case, rng)
  logits = rng.normal(scale=3.0, size=(*labels.shape, N_HEADS, VOCAB)).astype(np.float32)
  weights = _weights(weight_kind, labels.shape, rng)
  out = jax.jit(mtp_cross_entropy)(logits, labels, attention_mask, weights)
  ref = reference_mtp(logits, labels, attention_mask, weights)
  for key in ("loss", "unweighted", "per_head", "per_head_unweighted"):
    np.testing.assert_allclose(out[key], ref[key], **SIMPLE, err_msg=key)
  np.testing.assert_array_equal(out["n_valid_per_head"], ref["n_valid_per_head"])
  if case == "short":
    assert ref["n_valid_per_head"][2:].sum() == 0 and ref["n_valid_per_head"][:2].min() > 0
  if case == "one":
    assert float(out["loss"]) == 0.0


def test_global_counts_make_micro_batch_losses_add_up():
  rng = np.random.default_rng(12)
  labels, attention_mask = _batch("mixed", rng)
  logits = rng.normal(size=(*labels.shape, N_HEADS, VOCAB)).astype(np.float32)
  weights = _weights("term", labels.shape, rng)
  full = mtp_cross_entropy(logits, labels, attention_mask, weights)
  ce = token_ce(logits, mtp_targets(labels, attention_mask, N_HEADS)[0])
  parts = []
  for rows in (slice(0, 1), slice(1, 4)):
    _, valid = mtp_targets(labels[rows], attention_mask[rows], N_HEADS)
    parts.append(reduce_per_head(ce[rows], valid, jnp.asarray(weights[rows]),
                                 n_valid_per_head=full["n_valid_per_head"]))
  for key in ("loss", "unweighted", "per_head", "per_head_unweighted"):
    np.testing.assert_allclose(parts[0][key] + parts[1][key], full[key], **SIMPLE, err_msg=key)


def test_weights_not_stop_gradiented():
  rng = np.random.default_rng(1)
  labels, attention_mask = _batch("mixed", rng)
  logits = rng.normal(size=(*labels.shape, N_HEADS, VOCAB)).astype(np.float32)
  weights = _weights("target", labels.shape, rng)
  grad = jax.grad(lambda w: mtp_cross_entropy(logits, labels, attention_mask, w)["loss"])(weights)
  # d loss / d W[b, j] = Σ_k ce(t=j-1-k, k) / (count_k · n_heads_with_targets) for valid terms.
  ref = np.zeros_like(weights, dtype=np.float64)
  counts = reference_mtp(logits, labels, attention_mask, None)["n_valid_per_head"]
  n_heads = (counts > 0).sum()
  for b in range(labels.shape[0]):
    for j in range(labels.shape[1]):
      for k in range(N_HEADS):
        t = j - 1 - k
        if t < 0 or labels[b, j] == IGNORE_INDEX or attention_mask[b, j] == 0:
          continue
        row = logits[b, t, k].astype(np.float64)
        ce = np.log(np.sum(np.exp(row - row.max()))) + row.max() - row[labels[b, j]]
        ref[b, j] += ce / (counts[k] * n_heads)
  np.testing.assert_allclose(grad, ref, **SIMPLE)


@pytest.mark.parametrize("weight_kind", ["target", "term"])
def test_zero_weight_term_has_zero_gradient(weight_kind):
  rng = np.random.default_rng(2)
  hidden, unembedding, labels, attention_mask = _hidden_inputs("mixed", rng)
  weights = _weights(weight_kind, labels.shape, rng)
  b, t, k = 0, 4, 1  # a valid term: target j = 6 is a response token of row 0
  j = t + 1 + k
  if weight_kind == "target":
    weights[b, j] = 0.0  # zeroes every term with target x_j: (t', k') with t' + 1 + k' = j
    zero_terms = [(j - 1 - kk, kk) for kk in range(N_HEADS)]
  else:
    weights[b, t, k] = 0.0
    zero_terms = [(t, k)]
  logits = np.einsum("bsnd,dv->bsnv", hidden, unembedding)
  grad_logits = jax.grad(lambda x: mtp_cross_entropy(x, labels, attention_mask, weights)["loss"])(
      logits)
  grad_hidden = jax.grad(lambda h: _efficient(h, unembedding, labels, attention_mask,
                                              weights)["loss"])(hidden)
  for tt, kk in zero_terms:
    assert np.all(np.asarray(grad_logits[b, tt, kk]) == 0.0)
    assert np.all(np.asarray(grad_hidden[b, tt, kk]) == 0.0)
  assert np.abs(np.asarray(grad_hidden)).sum() > 0


def test_garbage_on_invalid_terms_does_not_leak():
  rng = np.random.default_rng(3)
  labels, attention_mask = _batch("mixed", rng)
  logits = rng.normal(size=(*labels.shape, N_HEADS, VOCAB)).astype(np.float32)
  weights = _weights("term", labels.shape, rng)
  clean = mtp_cross_entropy(logits, labels, attention_mask, weights)
  weights[2] = np.inf  # row 2 has no valid target
  value, grad = jax.value_and_grad(
      lambda x, w: mtp_cross_entropy(x, labels, attention_mask, w)["loss"], argnums=(0, 1))(
          logits, weights)
  np.testing.assert_allclose(value, clean["loss"], **SIMPLE)
  assert all(np.isfinite(np.asarray(g)).all() for g in grad)


@pytest.mark.parametrize("weight_kind", ["none", "target", "term"])
@pytest.mark.parametrize("case", ["mixed", "short", "one"])
def test_from_hidden_matches_plain_value_and_gradient(case, weight_kind):
  rng = np.random.default_rng(4)
  hidden, unembedding, labels, attention_mask = _hidden_inputs(case, rng)
  weights = _weights(weight_kind, labels.shape, rng)
  weights = None if weights is None else jnp.asarray(weights)

  def value_and_grads(loss_fn):
    def scalar(h, u, w):
      out = loss_fn(h, u, labels, attention_mask, w)
      return _scalar(out), out
    argnums = (0, 1) if weights is None else (0, 1, 2)
    return jax.jit(jax.value_and_grad(scalar, argnums=argnums, has_aux=True))(
        hidden, unembedding, weights)

  (value, out), grads = value_and_grads(_efficient)
  (value_ref, out_ref), grads_ref = value_and_grads(_plain_from_hidden)
  np.testing.assert_allclose(value, value_ref, **SIMPLE)
  for key in out_ref:
    np.testing.assert_allclose(out[key], out_ref[key], **SIMPLE, err_msg=key)
  for name, g, g_ref in zip(("hidden", "unembedding", "weights"), grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, **SIMPLE, err_msg=name)
  # And the plain loss itself against the loop reference.
  ref = reference_mtp(np.einsum("bsnd,dv->bsnv", hidden, unembedding), labels, attention_mask,
                      None if weights is None else np.asarray(weights))
  np.testing.assert_allclose(out["loss"], ref["loss"], **SIMPLE)


def test_from_hidden_bfloat16():
  rng = np.random.default_rng(6)
  hidden, unembedding, labels, attention_mask = _hidden_inputs("mixed", rng)
  weights = _weights("target", labels.shape, rng)
  hidden_bf16 = jnp.asarray(hidden, jnp.bfloat16)
  unembedding_bf16 = jnp.asarray(unembedding, jnp.bfloat16)
  loss_fn = lambda h, u, f: f(h, u, labels, attention_mask, weights)["loss"]
  value, (g_hidden, g_unembedding) = jax.jit(
      jax.value_and_grad(loss_fn, argnums=(0, 1)), static_argnums=2)(
          hidden_bf16, unembedding_bf16, _efficient)
  assert value.dtype == jnp.float32
  assert g_hidden.dtype == jnp.bfloat16 and g_unembedding.dtype == jnp.bfloat16
  # Reference: the plain loss in float32 on the same (bf16-representable) values.
  value_ref, (g_hidden_ref, g_unembedding_ref) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
      hidden_bf16.astype(jnp.float32), unembedding_bf16.astype(jnp.float32), _plain_from_hidden)
  np.testing.assert_allclose(value, value_ref, **SIMPLE)  # float32 accumulation throughout
  for g, g_ref in ((g_hidden, g_hidden_ref), (g_unembedding, g_unembedding_ref)):
    g = np.asarray(g.astype(jnp.float32))
    np.testing.assert_allclose(g, g_ref, rtol=1e-2, atol=1e-2 * np.abs(g_ref).max())


def test_from_hidden_uses_less_temporary_memory():
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 2048, size=(2, 64))
  attention_mask = np.ones_like(labels)
  hidden = jnp.asarray(rng.normal(size=(2, 64, N_HEADS, 32)), jnp.float32)
  unembedding = jnp.asarray(rng.normal(size=(32, 2048)), jnp.float32)

  def temp_bytes(loss_fn):
    step = jax.jit(jax.value_and_grad(
        lambda h, u: loss_fn(h, u, labels, attention_mask)["loss"], argnums=(0, 1)))
    memory = step.lower(hidden, unembedding).compile().memory_analysis()
    if memory is None:
      pytest.skip("memory_analysis() returns None on this backend")
    return memory.temp_size_in_bytes

  plain = temp_bytes(lambda h, u, l, a: _plain_from_hidden(h, u, l, a, None))
  efficient = temp_bytes(lambda h, u, l, a: mtp_cross_entropy_from_hidden(
      h, u, l, a, vocab_block=256, token_block=128))
  logits_bytes = 2 * 64 * N_HEADS * 2048 * 4
  assert plain >= logits_bytes
  assert efficient < logits_bytes // 4, (efficient, plain)


def test_mtp_bad_inputs():
  logits = np.zeros((2, 5, N_HEADS, VOCAB), np.float32)
  labels = np.zeros((2, 5), np.int32)
  mask = np.ones((2, 5), np.int32)
  raises(["weights", "rank 2 or 3", "(2,)"], mtp_cross_entropy, logits, labels, mask,
         np.ones(2))
  raises(["weights shape (2, 6)", "labels shape (2, 5)"], mtp_cross_entropy, logits, labels,
         mask, np.ones((2, 6)))
  raises(["weights shape (2, 5, 3)", "logits shape (2, 5, 4, 13)"], mtp_cross_entropy, logits,
         labels, mask, np.ones((2, 5, 3)))
  raises(["labels shape (2, 5)", "attention_mask shape (2, 4)"], mtp_cross_entropy, logits,
         labels, np.ones((2, 4)))
  raises(["logits shape (2, 6, 4, 13)", "labels shape (2, 5)"], mtp_cross_entropy,
         np.zeros((2, 6, N_HEADS, VOCAB)), labels, mask)
  raises(["logits", "rank 4", "(2, 5, 13)"], mtp_cross_entropy, np.zeros((2, 5, VOCAB)), labels,
         mask)
  hidden = np.zeros((2, 5, N_HEADS, DIM), np.float32)
  raises(["hidden shape (2, 5, 4, 6)", "unembedding shape (7, 13)"],
         mtp_cross_entropy_from_hidden, hidden, np.zeros((7, VOCAB)), labels, mask)
  raises(["hidden shape (3, 5, 4, 6)", "labels shape (2, 5)"], mtp_cross_entropy_from_hidden,
         np.zeros((3, 5, N_HEADS, DIM)), np.zeros((DIM, VOCAB)), labels, mask)
  raises(["hidden_MxD shape (4, 6)", "targets_M shape (5,)"], blockwise_token_ce,
         np.zeros((4, DIM)), np.zeros((DIM, VOCAB)), np.zeros(5, np.int32))
