"""Weighted multi-token cross-entropy (DESIGN §2).

Shapes follow the package legend (the ``wmtp_jax`` docstring); here ``E`` is the last axis of the
per-term input: ``V`` for logits, ``D`` for hidden states.

Index conventions (DESIGN §2): ``labels[b, j] = x_j`` on the response and ``IGNORE_INDEX`` (-100)
on prompt and padding; head k at position t predicts ``x_{t+1+k}``. The MTP term (t, k) is valid
iff ``v = mask[t+1+k] · attention_mask[t+1+k] = 1`` with ``mask = labels != IGNORE_INDEX``
(terms whose target lies past the end of the row are invalid). Per head

    CE_k = Σ_{b,t} v·w·ce(logits[b, t, k], labels[b, t+1+k]) / Σ_{b,t} v

i.e. divided by the *count* of valid targets of head k over the whole batch, not by the sum of
weights; the total is the mean of ``CE_k`` over heads with at least one valid target (0 if none).
A 2-D weight ``W[b, j]`` lives on the target token (head k at t uses ``W[b, t+1+k]``); a 3-D
weight ``W[b, t, k]`` scales exactly the term (t, k).

Weights are *not* wrapped in ``stop_gradient`` here: the losses are differentiable w.r.t. the
weights and the trainer decides whether weights are constants.

The two MTP losses share target construction (``mtp_targets``), weight alignment
(``expand_weights``) and the reduction (``reduce_per_head``); they differ only in how the per-term
CE ``[B, S, n]`` is computed: from materialised logits (``token_ce``) or blockwise from hidden
states (``wmtp_jax.losses.blockwise_ce.blockwise_token_ce``). Everything is computed in float32.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from wmtp_jax import IGNORE_INDEX, arrays
from wmtp_jax.arrays import check_dim, check_rank, check_same_shape
from wmtp_jax.losses.blockwise_ce import (DEFAULT_TOKEN_BLOCK, DEFAULT_VOCAB_BLOCK,
                                          blockwise_token_ce)


def mtp_targets(labels, attention_mask, n: int):
  """Shifted MTP targets and their validity.

  Args:
    labels: ``[B, S]`` int, ``IGNORE_INDEX`` on prompt and padding.
    attention_mask: ``[B, S]``, nonzero on non-padding tokens.
    n: number of heads.

  Returns:
    ``(targets_BxSxn, valid_BxSxn)``: int32 ``targets[b, t, k] = labels[b, t+1+k]`` where the term
    is valid and ``IGNORE_INDEX`` elsewhere (incl. ``t+1+k >= S``); bool ``valid[b, t, k] =
    mask[b, t+1+k] · attention_mask[b, t+1+k]``.
  """
  check_rank("labels", labels, (2,))
  check_same_shape("labels", labels, "attention_mask", attention_mask)
  labels_BxSxn = arrays.future_window(jnp.asarray(labels, jnp.int32), n, IGNORE_INDEX)
  attention_BxSxn = arrays.future_window(jnp.asarray(attention_mask, jnp.int32), n, 0)
  valid_BxSxn = (labels_BxSxn != IGNORE_INDEX) & (attention_BxSxn != 0)
  return jnp.where(valid_BxSxn, labels_BxSxn, IGNORE_INDEX), valid_BxSxn


def expand_weights(weights, n: int):
  """Per-term float32 weights ``[B, S, n]`` from ``[B, S]`` (target-aligned) or ``[B, S, n]``.

  A 2-D weight gives ``out[b, t, k] = weights[b, t+1+k]`` (0 past the end of the row); a 3-D
  weight is returned as is. ``None`` stays ``None`` (all weights 1).
  """
  if weights is None:
    return None
  check_rank("weights", weights, (2, 3))
  weights = jnp.asarray(weights, jnp.float32)
  return weights if weights.ndim == 3 else arrays.future_window(weights, n, 0.0)


def reduce_per_head(ce_BxSxn, valid_BxSxn, weights_BxSxn=None, *, n_valid_per_head=None) -> dict:
  """Reduce per-term CE ``[B, S, n]`` to the MTP loss dict (see module docstring).

  Invalid terms are excluded with ``where`` (not a product), so garbage CE or weights there
  (inf/NaN) reach neither the value nor the gradient.

  ``n_valid_per_head`` (``[n]``) replaces the per-head denominators counted from ``valid_BxSxn``:
  with the counts of a whole step batch, the losses of its micro-batches sum to the loss of the
  whole batch (gradient accumulation).

  Returns:
    ``loss`` (weighted total), ``unweighted`` (total with all weights 1), ``per_head`` ``[n]``,
    ``per_head_unweighted`` ``[n]``, ``n_valid_per_head`` ``[n]`` int32. Heads without valid
    targets have per-head loss 0 and are left out of the totals.
  """
  ce_BxSxn = jnp.where(valid_BxSxn, ce_BxSxn.astype(jnp.float32), 0.0)
  if weights_BxSxn is None:
    weighted_BxSxn = ce_BxSxn
  else:
    weighted_BxSxn = jnp.where(valid_BxSxn, weights_BxSxn, 0.0) * ce_BxSxn
  n_valid_n = (valid_BxSxn.sum(axis=(0, 1), dtype=jnp.int32) if n_valid_per_head is None
               else jnp.asarray(n_valid_per_head, jnp.int32))
  denom_n = jnp.maximum(n_valid_n, 1).astype(jnp.float32)
  per_head_n = weighted_BxSxn.sum(axis=(0, 1)) / denom_n
  per_head_unweighted_n = ce_BxSxn.sum(axis=(0, 1)) / denom_n
  has_valid_n = n_valid_n > 0
  n_heads = jnp.maximum(has_valid_n.sum(), 1).astype(jnp.float32)
  return {
      "loss": jnp.where(has_valid_n, per_head_n, 0.0).sum() / n_heads,
      "unweighted": jnp.where(has_valid_n, per_head_unweighted_n, 0.0).sum() / n_heads,
      "per_head": per_head_n,
      "per_head_unweighted": per_head_unweighted_n,
      "n_valid_per_head": n_valid_n,
  }


def _mtp_loss(name: str, x_BxSxnxE, labels, attention_mask, weights,
              per_term_ce: Callable) -> dict:
  """Check inputs, build targets and weights, reduce ``per_term_ce(x, targets) -> [B, S, n]``."""
  check_rank(name, x_BxSxnxE, (4,))
  check_rank("labels", labels, (2,))
  check_dim(name, x_BxSxnxE, 0, "labels", labels, 0)
  check_dim(name, x_BxSxnxE, 1, "labels", labels, 1)
  if weights is not None:
    check_rank("weights", weights, (2, 3))
    check_dim("weights", weights, 0, "labels", labels, 0)
    check_dim("weights", weights, 1, "labels", labels, 1)
    if weights.ndim == 3:
      check_dim("weights", weights, 2, name, x_BxSxnxE, 2)
  n = x_BxSxnxE.shape[2]
  targets_BxSxn, valid_BxSxn = mtp_targets(labels, attention_mask, n)
  return reduce_per_head(per_term_ce(x_BxSxnxE, targets_BxSxn), valid_BxSxn,
                         expand_weights(weights, n))


def token_ce(logits_xV, targets_x):
  """Per-term CE ``logsumexp(logits) - logits[target]`` in float32 over the last axis.

  ``logits_xV`` is ``[..., V]`` and ``targets_x`` is ``[...]``; ``IGNORE_INDEX`` targets give 0.
  """
  logits_xV = jnp.asarray(logits_xV, jnp.float32)
  ignored_x = targets_x == IGNORE_INDEX
  safe_x = jnp.where(ignored_x, 0, targets_x)
  picked_x = jnp.take_along_axis(logits_xV, safe_x[..., None], axis=-1)[..., 0]
  return jnp.where(ignored_x, 0.0, jax.nn.logsumexp(logits_xV, axis=-1) - picked_x)


def mtp_cross_entropy(logits, labels, attention_mask, weights=None) -> dict:
  """Weighted multi-token cross-entropy from materialised logits (DESIGN §2).

  Args:
    logits: ``[B, S, n, V]``; ``logits[b, t, k]`` predicts ``x_{t+1+k}``. Any float dtype.
    labels: ``[B, S]`` int, ``IGNORE_INDEX`` on prompt and padding.
    attention_mask: ``[B, S]``, nonzero on non-padding tokens.
    weights: ``None`` (all 1), ``[B, S]`` target-aligned or ``[B, S, n]`` per term. Not
      stop-gradiented.

  Returns:
    Dict with float32 ``loss``, ``unweighted``, ``per_head`` ``[n]``, ``per_head_unweighted``
    ``[n]`` and int32 ``n_valid_per_head`` ``[n]`` (see ``reduce_per_head``).

  Raises:
    ValueError: naming the arguments and shapes if ranks or shapes do not fit.
  """
  return _mtp_loss("logits", logits, labels, attention_mask, weights, token_ce)


def mtp_cross_entropy_from_hidden(hidden, unembedding, labels, attention_mask, weights=None, *,
                                  vocab_block: int = DEFAULT_VOCAB_BLOCK,
                                  token_block: int = DEFAULT_TOKEN_BLOCK) -> dict:
  """``mtp_cross_entropy(hidden @ unembedding, ...)`` without materialising ``[B, S, n, V]``.

  Same values and gradients (w.r.t. ``hidden``, ``unembedding`` and ``weights``) as the plain
  loss; the per-term CE is computed by ``blockwise_token_ce`` over the ``B·S·n`` flattened
  tokens, blockwise over tokens (``token_block``) and vocabulary (``vocab_block``), and its
  backward pass recomputes logits blocks instead of storing them.

  Args:
    hidden: ``[B, S, n, D]`` per-head final-normed hidden states, float32 or bfloat16.
    unembedding: ``[D, V]`` output projection (Flax kernel layout ``[embed, vocab]``).
    labels, attention_mask, weights: as in ``mtp_cross_entropy``.
    vocab_block, token_block: block sizes (need not divide V or B·S·n).

  Returns:
    The dict of ``mtp_cross_entropy``.
  """
  check_rank("unembedding", unembedding, (2,))
  check_rank("hidden", hidden, (4,))
  check_dim("hidden", hidden, 3, "unembedding", unembedding, 0)

  per_term_ce = lambda h, targets: hidden_token_ce(h, unembedding, targets, vocab_block=vocab_block,
                                                  token_block=token_block)
  return _mtp_loss("hidden", hidden, labels, attention_mask, weights, per_term_ce)


def hidden_token_ce(hidden_xD, unembedding, targets_x, *, vocab_block: int = DEFAULT_VOCAB_BLOCK,
                    token_block: int = DEFAULT_TOKEN_BLOCK):
  """Per-term CE of ``hidden_xD @ unembedding`` against ``targets_x`` (any leading shape ``x``),
  blockwise (``blockwise_token_ce``): the logits are never materialised. ``IGNORE_INDEX`` → 0."""
  ce_M = blockwise_token_ce(hidden_xD.reshape(-1, hidden_xD.shape[-1]), unembedding,
                            targets_x.reshape(-1), vocab_block=vocab_block, token_block=token_block)
  return ce_M.reshape(targets_x.shape)
