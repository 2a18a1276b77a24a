"""Memory-efficient per-token cross-entropy straight from hidden states.

Shapes follow the package legend (the ``wmtp_jax`` docstring): ``M`` tokens (any flattening of
B·S·n), ``T`` tokens of a block, ``G`` token blocks, ``C`` vocabulary columns of a block.

``blockwise_token_ce(hidden_MxD, unembedding_DxV, targets_M)`` returns, in float32,

    ce[i] = logsumexp_v(hidden[i] @ unembedding[:, v]) - hidden[i] @ unembedding[:, targets[i]]

without materialising the ``[M, V]`` logits. Tokens are tiled into blocks of T (MaxText vocabulary
tiling) and the vocabulary into blocks of C with an online logsumexp (Levanter blockwise CE), so
only ``O(T·C)`` float32 logits are live at a time. A ``jax.custom_vjp`` keeps only the
per-token logsumexp ``[M]`` as residual and recomputes each logits block in the backward pass, so
the backward is blockwise too. The target logit is a gather of M columns of the unembedding (no
one-hot). Ragged sizes work: tokens are zero-padded to a multiple of T (padding gets zero
cotangent); the vocabulary runs ``V // C`` full blocks plus one remainder block of ``V % C``
columns (no padded copy of the ``[D, V]`` unembedding or its gradient).

Inputs may be float32 or bfloat16; matmuls accumulate in float32 and all softmax math is float32.
Gradients come back in the dtype of the corresponding input. Targets equal to ``IGNORE_INDEX``
give ``ce = 0`` and no gradient.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.arrays import check_dim, check_rank

# Tuned with ``python -m wmtp_jax.bench loss`` (M = 8192, D = 512, V = 32000) on a 2-core CPU,
# where time is flat for T·C between 1M and 8M and temp memory grows with it. Accelerators may
# prefer larger blocks.
DEFAULT_TOKEN_BLOCK = 1024
DEFAULT_VOCAB_BLOCK = 2048


def _pad_tokens(x, token_block: int):
  """Zero-pad axis 0 up to a multiple of ``token_block`` and split it: ``[G, T, ...]``."""
  pad = -x.shape[0] % token_block
  if pad:
    x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(-1, token_block, *x.shape[1:])


def _fold_vocab(step, carry, vocab_size: int, vocab_block: int):
  """``carry = step(carry, start, size)`` over the vocabulary blocks ``[start, start + size)``.

  The ``V // C`` full blocks run in a ``lax.scan`` (dynamic ``start``, static ``size = C``); a
  ragged remainder ``V % C`` is one more call with its own static size, so nothing is padded.
  """
  n_full = vocab_size // vocab_block
  if n_full:
    carry, _ = lax.scan(lambda c, i: (step(c, i * vocab_block, vocab_block), None), carry,
                        jnp.arange(n_full))
  if vocab_size % vocab_block:
    carry = step(carry, n_full * vocab_block, vocab_size % vocab_block)
  return carry


def _block_logits(h_TxD, w_DxV, start, size: int):
  """Float32 logits ``[T, size]`` of vocabulary columns ``[start, start + size)`` and that block
  ``w_DxC`` of the unembedding."""
  w_DxC = lax.dynamic_slice_in_dim(w_DxV, start, size, axis=1)
  return jnp.matmul(h_TxD, w_DxC, preferred_element_type=jnp.float32), w_DxC


def _target_columns(w_DxV, targets_M):
  """``[M, D]`` unembedding columns of the targets (column 0 where the target is ignored)."""
  safe_M = jnp.where(targets_M == IGNORE_INDEX, 0, targets_M)
  return jnp.take(w_DxV, safe_M, axis=1).T, safe_M


def _logsumexp_blocks(h_MxD, w_DxV, token_block: int, vocab_block: int):
  """Per-token ``logsumexp`` of ``h @ w`` over the vocabulary, float32 ``[M]``, blockwise."""
  vocab_size = w_DxV.shape[1]

  def token_block_lse(h_TxD):
    def vocab_step(carry, start, size):
      max_T, sum_T = carry
      logits_TxC, _ = _block_logits(h_TxD, w_DxV, start, size)
      new_max_T = jnp.maximum(max_T, logits_TxC.max(axis=-1))
      sum_T = (sum_T * jnp.exp(max_T - new_max_T)
               + jnp.exp(logits_TxC - new_max_T[:, None]).sum(axis=-1))
      return new_max_T, sum_T

    init = (jnp.full((token_block,), -jnp.inf, jnp.float32),
            jnp.zeros((token_block,), jnp.float32))
    max_T, sum_T = _fold_vocab(vocab_step, init, vocab_size, vocab_block)
    return max_T + jnp.log(sum_T)

  lse_GxT = lax.map(token_block_lse, _pad_tokens(h_MxD, token_block))
  return lse_GxT.reshape(-1)[:h_MxD.shape[0]]


def _ce_fwd(h_MxD, w_DxV, targets_M, token_block, vocab_block):
  lse_M = _logsumexp_blocks(h_MxD, w_DxV, token_block, vocab_block)
  w_cols_MxD, _ = _target_columns(w_DxV, targets_M)
  picked_M = jnp.sum(h_MxD.astype(jnp.float32) * w_cols_MxD.astype(jnp.float32), axis=-1)
  ce_M = jnp.where(targets_M == IGNORE_INDEX, 0.0, lse_M - picked_M)
  return ce_M, (h_MxD, w_DxV, targets_M, lse_M)


def _ce_bwd(token_block, vocab_block, residuals, g_M):
  """``d logits_i = g_i · (softmax_i - onehot_i)``, contracted block by block in float32."""
  h_MxD, w_DxV, targets_M, lse_M = residuals
  n_tokens, dim = h_MxD.shape
  vocab_size = w_DxV.shape[1]
  g_M = jnp.where(targets_M == IGNORE_INDEX, 0.0, g_M.astype(jnp.float32))

  def token_step(dw_DxV, xs):
    h_TxD, g_T, lse_T = xs

    def vocab_step(carry, start, size):
      dh_TxD, dw_DxV = carry
      logits_TxC, w_DxC = _block_logits(h_TxD, w_DxV, start, size)
      dlogits_TxC = g_T[:, None] * jnp.exp(logits_TxC - lse_T[:, None])
      dh_TxD = dh_TxD + jnp.matmul(dlogits_TxC, w_DxC.T, preferred_element_type=jnp.float32)
      dw_DxC = (lax.dynamic_slice_in_dim(dw_DxV, start, size, axis=1)
                + jnp.matmul(h_TxD.T, dlogits_TxC, preferred_element_type=jnp.float32))
      return dh_TxD, lax.dynamic_update_slice_in_dim(dw_DxV, dw_DxC, start, axis=1)

    init = (jnp.zeros((token_block, dim), jnp.float32), dw_DxV)
    dh_TxD, dw_DxV = _fold_vocab(vocab_step, init, vocab_size, vocab_block)
    return dw_DxV, dh_TxD

  dw_DxV, dh_GxTxD = lax.scan(
      token_step, jnp.zeros(w_DxV.shape, jnp.float32),
      (_pad_tokens(h_MxD, token_block), _pad_tokens(g_M, token_block),
       _pad_tokens(lse_M, token_block)))
  dh_MxD = dh_GxTxD.reshape(-1, dim)[:n_tokens]

  # The -onehot part: d logits[i, targets[i]] -= g[i].
  w_cols_MxD, safe_M = _target_columns(w_DxV, targets_M)
  dh_MxD = dh_MxD - g_M[:, None] * w_cols_MxD.astype(jnp.float32)
  gh_MxD = g_M[:, None] * h_MxD.astype(jnp.float32)
  dw_DxV = dw_DxV.at[:, safe_M].add(-gh_MxD.T)
  return dh_MxD.astype(h_MxD.dtype), dw_DxV.astype(w_DxV.dtype), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _token_ce(h_MxD, w_DxV, targets_M, token_block, vocab_block):
  return _ce_fwd(h_MxD, w_DxV, targets_M, token_block, vocab_block)[0]


_token_ce.defvjp(_ce_fwd, _ce_bwd)


def blockwise_token_ce(hidden_MxD, unembedding_DxV, targets_M, *,
                       vocab_block: int = DEFAULT_VOCAB_BLOCK,
                       token_block: int = DEFAULT_TOKEN_BLOCK):
  """Per-token cross-entropy of ``hidden @ unembedding`` without materialising the logits.

  Args:
    hidden_MxD: ``[M, D]`` final-normed hidden states, float32 or bfloat16.
    unembedding_DxV: ``[D, V]`` output projection (Flax kernel layout ``[embed, vocab]``).
    targets_M: ``[M]`` int target ids; ``IGNORE_INDEX`` entries give 0 and no gradient.
    vocab_block: vocabulary columns per block (clamped to V; need not divide V).
    token_block: tokens per block (clamped to M; need not divide M).

  Returns:
    ``[M]`` float32 ``ce[i] = logsumexp(logits[i]) - logits[i, targets[i]]``, differentiable
    w.r.t. ``hidden_MxD`` and ``unembedding_DxV`` (blockwise custom VJP, any cotangent).
  """
  check_rank("hidden_MxD", hidden_MxD, (2,))
  check_rank("unembedding_DxV", unembedding_DxV, (2,))
  check_rank("targets_M", targets_M, (1,))
  check_dim("hidden_MxD", hidden_MxD, 1, "unembedding_DxV", unembedding_DxV, 0)
  check_dim("hidden_MxD", hidden_MxD, 0, "targets_M", targets_M, 0)
  n_tokens, vocab_size = hidden_MxD.shape[0], unembedding_DxV.shape[1]
  token_block = max(1, min(token_block, n_tokens))
  vocab_block = max(1, min(vocab_block, vocab_size))
  return _token_ce(hidden_MxD, unembedding_DxV, jnp.asarray(targets_M, jnp.int32), token_block,
                   vocab_block)


def blockwise_argmax(hidden_MxD, unembedding_DxV, *, vocab_block: int = DEFAULT_VOCAB_BLOCK,
                     token_block: int = DEFAULT_TOKEN_BLOCK):
  """``argmax_v(hidden @ unembedding)`` per token without materialising the ``[M, V]`` logits.

  The same tiling as ``blockwise_token_ce`` (token blocks of T, vocabulary blocks of C with a
  running maximum); the first maximum wins on ties, as ``jnp.argmax``. Not differentiable (an
  index); inputs as in ``blockwise_token_ce``.

  Returns:
    ``[M]`` int32 token ids.
  """
  check_rank("hidden_MxD", hidden_MxD, (2,))
  check_rank("unembedding_DxV", unembedding_DxV, (2,))
  check_dim("hidden_MxD", hidden_MxD, 1, "unembedding_DxV", unembedding_DxV, 0)
  n_tokens, vocab_size = hidden_MxD.shape[0], unembedding_DxV.shape[1]
  token_block = max(1, min(token_block, n_tokens))
  vocab_block = max(1, min(vocab_block, vocab_size))

  def token_block_argmax(h_TxD):
    def vocab_step(carry, start, size):
      max_T, arg_T = carry
      logits_TxC, _ = _block_logits(h_TxD, unembedding_DxV, start, size)
      block_max_T = logits_TxC.max(axis=-1)
      better_T = block_max_T > max_T  # strictly: an earlier block keeps a tie
      return (jnp.where(better_T, block_max_T, max_T),
              jnp.where(better_T, start + jnp.argmax(logits_TxC, axis=-1).astype(jnp.int32),
                        arg_T))

    init = (jnp.full((token_block,), -jnp.inf, jnp.float32), jnp.zeros((token_block,), jnp.int32))
    return _fold_vocab(vocab_step, init, vocab_size, vocab_block)[1]

  arg_GxT = lax.map(token_block_argmax, _pad_tokens(hidden_MxD, token_block))
  return arg_GxT.reshape(-1)[:n_tokens]
