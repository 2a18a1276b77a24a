"""Tests for wmtp_jax.losses.blockwise_ce: values and VJPs equal the plain per-token CE."""

import functools

import jax
import numpy as np
import pytest

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.losses import token_ce
from wmtp_jax.losses.blockwise_ce import blockwise_argmax, blockwise_token_ce

SIMPLE = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab_block,token_block", [(8, 5), (37, 64), (1, 1), (40, 3)])
def test_blockwise_token_ce_vjp_any_cotangent(vocab_block, token_block):
  rng = np.random.default_rng(5)
  hidden = rng.normal(size=(23, 7)).astype(np.float32)
  unembedding = rng.normal(size=(7, 37)).astype(np.float32)
  targets = rng.integers(0, 37, size=(23,))
  targets[[0, 5, 6]] = IGNORE_INDEX
  cotangent = rng.normal(size=(23,)).astype(np.float32)

  @functools.partial(jax.jit, static_argnums=0)
  def ce_and_vjp(per_term_ce):
    ce, vjp = jax.vjp(per_term_ce, hidden, unembedding)
    return ce, vjp(cotangent)

  ce, grads = ce_and_vjp(lambda h, u: blockwise_token_ce(
      h, u, targets, vocab_block=vocab_block, token_block=token_block))
  ce_ref, grads_ref = ce_and_vjp(lambda h, u: token_ce(h @ u, targets))
  np.testing.assert_allclose(ce, ce_ref, **SIMPLE)
  assert np.all(np.asarray(ce)[[0, 5, 6]] == 0.0)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, **SIMPLE)


@pytest.mark.parametrize("vocab_block,token_block", [(8, 5), (37, 64), (1, 1), (10, 3)])
def test_blockwise_argmax_equals_argmax_first_on_ties(vocab_block, token_block):
  rng = np.random.default_rng(7)
  # Small integers: exact float32 logits with many ties, within and across vocabulary blocks.
  hidden = rng.integers(-2, 3, size=(29, 4)).astype(np.float32)
  unembedding = rng.integers(-1, 2, size=(4, 37)).astype(np.float32)
  unembedding[:, 30] = unembedding[:, 3]  # the same column in another block
  got = np.asarray(blockwise_argmax(hidden, unembedding, vocab_block=vocab_block,
                                    token_block=token_block))
  logits = hidden @ unembedding
  want = [int(np.flatnonzero(row == row.max())[0]) for row in logits]  # first maximum, a loop
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert any(np.sum(row == row.max()) > 1 for row in logits)  # ties were exercised
