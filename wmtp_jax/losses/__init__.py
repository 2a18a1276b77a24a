"""Losses: weighted multi-token cross-entropy (DESIGN §2) and critic / value losses (DESIGN §3).

Letters: B batch, S sequence positions, n = N heads, V vocabulary, D hidden size.

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
from wmtp_jax.losses.blockwise_ce import (DEFAULT_TOKEN_BLOCK, DEFAULT_VOCAB_BLOCK,
                                   blockwise_token_ce)
from wmtp_jax.arrays import check_dim, check_rank, check_same_shape


# ----------------------------------------------------------------------------------------------
# MTP cross-entropy: shared parts.


def mtp_targets(labels, attention_mask, n: int):
  """Shifted MTP targets and their validity.

  Args:
    labels: ``[B, S]`` int, ``IGNORE_INDEX`` on prompt and padding.
    attention_mask: ``[B, S]``, nonzero on non-padding tokens.
    n: number of heads.

  Returns:
    ``(targets_BxSxN, valid_BxSxN)``: int32 ``targets[b, t, k] = labels[b, t+1+k]`` where the term
    is valid and ``IGNORE_INDEX`` elsewhere (incl. ``t+1+k >= S``); bool ``valid[b, t, k] =
    mask[b, t+1+k] · attention_mask[b, t+1+k]``.
  """
  check_rank("labels", labels, (2,))
  check_same_shape("labels", labels, "attention_mask", attention_mask)
  labels_BxSxN = arrays.future_window(jnp.asarray(labels, jnp.int32), n, IGNORE_INDEX)
  attention_BxSxN = arrays.future_window(jnp.asarray(attention_mask, jnp.int32), n, 0)
  valid_BxSxN = (labels_BxSxN != IGNORE_INDEX) & (attention_BxSxN != 0)
  return jnp.where(valid_BxSxN, labels_BxSxN, IGNORE_INDEX), valid_BxSxN


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


def reduce_per_head(ce_BxSxN, valid_BxSxN, weights_BxSxN=None, *, n_valid_per_head=None) -> dict:
  """Reduce per-term CE ``[B, S, n]`` to the MTP loss dict (see module docstring).

  Invalid terms are excluded with ``where`` (not a product), so garbage CE or weights there
  (inf/NaN) reach neither the value nor the gradient.

  ``n_valid_per_head`` (``[n]``) replaces the per-head denominators counted from ``valid_BxSxN``:
  with the counts of a whole step batch, the losses of its micro-batches sum to the loss of the
  whole batch (gradient accumulation).

  Returns:
    ``loss`` (weighted total), ``unweighted`` (total with all weights 1), ``per_head`` ``[n]``,
    ``per_head_unweighted`` ``[n]``, ``n_valid_per_head`` ``[n]`` int32. Heads without valid
    targets have per-head loss 0 and are left out of the totals.
  """
  ce_BxSxN = jnp.where(valid_BxSxN, ce_BxSxN.astype(jnp.float32), 0.0)
  if weights_BxSxN is None:
    weighted_BxSxN = ce_BxSxN
  else:
    weighted_BxSxN = jnp.where(valid_BxSxN, weights_BxSxN, 0.0) * ce_BxSxN
  n_valid_N = (valid_BxSxN.sum(axis=(0, 1), dtype=jnp.int32) if n_valid_per_head is None
               else jnp.asarray(n_valid_per_head, jnp.int32))
  denom_N = jnp.maximum(n_valid_N, 1).astype(jnp.float32)
  per_head_N = weighted_BxSxN.sum(axis=(0, 1)) / denom_N
  per_head_unweighted_N = ce_BxSxN.sum(axis=(0, 1)) / denom_N
  has_valid_N = n_valid_N > 0
  n_heads = jnp.maximum(has_valid_N.sum(), 1).astype(jnp.float32)
  return {
      "loss": jnp.where(has_valid_N, per_head_N, 0.0).sum() / n_heads,
      "unweighted": jnp.where(has_valid_N, per_head_unweighted_N, 0.0).sum() / n_heads,
      "per_head": per_head_N,
      "per_head_unweighted": per_head_unweighted_N,
      "n_valid_per_head": n_valid_N,
  }


def _mtp_loss(name: str, x_BxSxNxF, labels, attention_mask, weights,
              per_term_ce: Callable) -> dict:
  """Check inputs, build targets and weights, reduce ``per_term_ce(x, targets) -> [B, S, n]``."""
  check_rank(name, x_BxSxNxF, (4,))
  check_rank("labels", labels, (2,))
  check_dim(name, x_BxSxNxF, 0, "labels", labels, 0)
  check_dim(name, x_BxSxNxF, 1, "labels", labels, 1)
  if weights is not None:
    check_rank("weights", weights, (2, 3))
    check_dim("weights", weights, 0, "labels", labels, 0)
    check_dim("weights", weights, 1, "labels", labels, 1)
    if weights.ndim == 3:
      check_dim("weights", weights, 2, name, x_BxSxNxF, 2)
  n = x_BxSxNxF.shape[2]
  targets_BxSxN, valid_BxSxN = mtp_targets(labels, attention_mask, n)
  return reduce_per_head(per_term_ce(x_BxSxNxF, targets_BxSxN), valid_BxSxN,
                         expand_weights(weights, n))


# ----------------------------------------------------------------------------------------------
# MTP cross-entropy: the two public losses.


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


# ----------------------------------------------------------------------------------------------
# Critic / value losses (DESIGN §3). Values, targets and masks are [B, S]; V[b, t] is the value
# of the state after reading x_0 … x_t. Masks are cast to float32 and treated as 0/1.


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


def lambda_return_value_loss(values, targets, mask, *, kind: str = "mse",
                             huber_delta: float = 0.5):
  """MSE or Huber loss of values against λ-return targets, averaged over masked tokens.

  ``mse``: ``(V - G)²``; ``huber``: ``0.5·e²`` if ``|e| <= δ`` else ``δ·(|e| - 0.5·δ)`` with
  ``e = V - G``. Targets (``wmtp_jax.weighting.lambda_returns``) are wrapped in
  ``stop_gradient``. To average over pos and neg sequences (DESIGN §3), concatenate them along the
  batch axis (pad to a common S): the mean is then over all masked tokens of both.

  Args:
    values, targets, mask: ``[B, S]``.
    kind: ``"mse"`` or ``"huber"``.
    huber_delta: δ of the Huber loss.

  Returns:
    Float32 scalar (0 if no token is masked in).
  """
  _check_values(values, targets=targets, mask=mask)
  targets_BxS = jax.lax.stop_gradient(jnp.asarray(targets, jnp.float32))
  error_BxS = jnp.asarray(values, jnp.float32) - targets_BxS
  if kind == "mse":
    loss_BxS = error_BxS**2
  elif kind == "huber":
    abs_BxS = jnp.abs(error_BxS)
    loss_BxS = jnp.where(abs_BxS <= huber_delta, 0.5 * error_BxS**2,
                         huber_delta * (abs_BxS - 0.5 * huber_delta))
  else:
    raise ValueError(f"kind must be 'mse' or 'huber', got {kind!r}")
  return _masked_mean(loss_BxS, mask)


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
  total_B, count_B = _masked_sum(error_BxS**2, mask, -1)
  has_B = count_B > 0
  row_B = jnp.where(has_B, total_B / jnp.maximum(count_B, 1.0), 0.0)
  return row_B.sum() / jnp.maximum(has_B.sum(), 1).astype(jnp.float32)


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
