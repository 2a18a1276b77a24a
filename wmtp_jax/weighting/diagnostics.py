"""Research diagnostics (issue 13, DESIGN §8): critic quality on pairs and samples, localization
of value drops in the mutated span, lift / entropy / clipping of a policy's token weights, and the
policy's token error rate on region vs other targets per head.

Shapes follow the package legend (the ``wmtp_jax`` docstring). Index conventions (DESIGN §2):

  * ``mask[b, t]`` is the response mask of token ``x_t`` (``labels[t] = x_t``, prompt and padding
    0); a region mask (``critical``, ``mutated``) is target-aligned the same way: ``region[b, t]``
    says whether token ``x_t`` lies in the span. Region tokens outside the response are ignored.
  * ``values[b, t]`` = V(s_t), the value after reading ``x_0 … x_t``.
  * A per-token quantity ``[B, S]`` (TD error, 2-D weight) lives on its target token ``x_t``; a
    per-term quantity ``[B, S, n]`` at ``[b, t, k]`` belongs to head ``k`` at position ``t``,
    whose target is ``x_{t+1+k}`` (a region mask is aligned to it by ``arrays.future_window``,
    as the losses align 2-D weights).

Every function is ``jax.jit``-compiled and returns float32 (a dict of float32 arrays, except
``mean_response_value``). Empty denominators never give NaN: a mean, rate, share or ratio over
nothing is 0, and the dict carries the count it was taken over (so 0 with count 0 means "no
data"), also what a caller needs to combine batches. The critic's explained variance is
``weighting.stats.explained_variance``.
"""

import functools

import jax
import jax.numpy as jnp

from wmtp_jax import arrays
from wmtp_jax.arrays import check_dim, check_rank, check_same_shape
from wmtp_jax.losses.mtp_ce import mtp_targets
from wmtp_jax.weighting.common import bool_mask, check_bxs_with_mask, f32, region_terms
from wmtp_jax.weighting.stats import weight_stats

CLIP_RTOL = 1e-6  # relative tolerance of "at a clip bound": ~8 float32 ulps


def _ratio(numerator, denominator):
  """``numerator / denominator`` where ``denominator > 0``, else 0 (float32)."""
  ok = denominator > 0.0
  return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), 0.0)


@jax.jit
def mean_response_value(values, mask):
  """Mean value over each row's response tokens, ``[B]`` float32 (0 for a row without one).

  ``v̄_b = Σ_t V[b, t]·mask[b, t] / Σ_t mask[b, t]``: the per-sequence score of the pairwise
  ranking loss (DESIGN §3; equal to its ``/(Σ mask + 1e-8)`` in float32 whenever Σ mask ≥ 1).

  Args:
    values: ``[B, S]`` V(s_t).
    mask: ``[B, S]`` response mask.
  """
  check_bxs_with_mask("values", values, mask)
  valid_BxS = bool_mask(mask)
  total_B = jnp.sum(jnp.where(valid_BxS, f32(values), 0.0), axis=1)
  return _ratio(total_B, jnp.sum(valid_BxS, axis=1, dtype=jnp.float32))


@jax.jit
def pairwise_accuracy(values_pos, mask_pos, values_neg, mask_neg) -> dict[str, jax.Array]:
  """Fraction of pairs whose correct sample has the larger mean response value; ties count half.

  Row ``b`` of pos (correct) and neg (incorrect) form a pair, scored by ``mean_response_value``.
  A pair where either row has no response token is left out.

  Args:
    values_pos, mask_pos: ``[B, S_pos]``. values_neg, mask_neg: ``[B, S_neg]`` (the lengths may
      differ).

  Returns:
    ``accuracy`` (0 without a pair) and ``count`` (pairs counted), float32 scalars.
  """
  for side, values, mask in (("pos", values_pos, mask_pos), ("neg", values_neg, mask_neg)):
    check_rank(f"values_{side}", values, (2,))
    check_same_shape(f"mask_{side}", mask, f"values_{side}", values)
  check_dim("values_neg", values_neg, 0, "values_pos", values_pos, 0)
  pos_B = mean_response_value(values_pos, mask_pos)
  neg_B = mean_response_value(values_neg, mask_neg)
  pair_B = jnp.any(bool_mask(mask_pos), axis=1) & jnp.any(bool_mask(mask_neg), axis=1)
  score_B = jnp.where(pos_B > neg_B, 1.0, jnp.where(pos_B == neg_B, 0.5, 0.0))
  count = jnp.sum(pair_B, dtype=jnp.float32)
  return {"accuracy": _ratio(jnp.sum(jnp.where(pair_B, score_B, 0.0)), count), "count": count}


@jax.jit
def auroc(scores, labels, valid=None) -> dict[str, jax.Array]:
  """Area under the ROC curve of ``scores`` separating positives from negatives; ties count half.

  The Mann–Whitney statistic ``AUROC = (#{(p, q): s_p > s_q} + ½·#{(p, q): s_p = s_q}) /
  (n_pos·n_neg)`` over positive ``p`` and negative ``q``, in O(B log B): the negatives' scores
  are sorted once and each positive counts the negatives below and equal to it by binary search.
  Scores must not be NaN. For the critic: ``scores`` = ``mean_response_value`` of correct and
  incorrect samples, ``labels`` = correct.

  Args:
    scores: ``[B]`` float.
    labels: ``[B]``, nonzero = positive (correct).
    valid: optional ``[B]``, rows to count (e.g. samples with a response token); default all.

  Returns:
    ``auroc`` (0 unless both classes are present), ``n_pos`` and ``n_neg``, float32 scalars.
  """
  check_rank("scores", scores, (1,))
  check_same_shape("labels", labels, "scores", scores)
  valid_B = jnp.ones(scores.shape, bool)
  if valid is not None:
    check_same_shape("valid", valid, "scores", scores)
    valid_B = bool_mask(valid)
  scores_B = f32(scores)
  pos_B = valid_B & bool_mask(labels)
  neg_B = valid_B & ~bool_mask(labels)
  n_neg = jnp.sum(neg_B, dtype=jnp.int32)
  neg_sorted_B = jnp.sort(jnp.where(neg_B, scores_B, jnp.inf))  # the n_neg negatives come first
  below_B = jnp.minimum(jnp.searchsorted(neg_sorted_B, scores_B, side="left"), n_neg)
  not_above_B = jnp.minimum(jnp.searchsorted(neg_sorted_B, scores_B, side="right"), n_neg)
  twice_wins_B = below_B + not_above_B  # 2·below + equal
  n_pos = jnp.sum(pos_B, dtype=jnp.float32)
  n_neg = n_neg.astype(jnp.float32)
  wins = 0.5 * jnp.sum(jnp.where(pos_B, twice_wins_B, 0).astype(jnp.float32))
  return {"auroc": _ratio(wins, n_pos * n_neg), "n_pos": n_pos, "n_neg": n_neg}


def _chance_of_hit(n_valid_B, n_span_B, k: int):
  """Probability that ``min(k, N)`` distinct positions drawn uniformly among a row's ``N``
  response tokens include one of its ``m`` span tokens: ``1 − Π_{i<min(k,N)} (N−m−i)/(N−i)``."""
  miss_B = jnp.ones_like(n_valid_B)
  for i in range(k):
    factor_B = jnp.maximum(n_valid_B - n_span_B - i, 0.0) / jnp.maximum(n_valid_B - i, 1.0)
    miss_B = miss_B * jnp.where(i < n_valid_B, factor_B, 1.0)
  return 1.0 - miss_B


@functools.partial(jax.jit, static_argnames=("ks",))
def localization_hits(td_errors, mask, mutated_mask, ks=(1, 3)) -> dict[str, jax.Array]:
  """Whether a row's largest value drops fall inside its mutated span (hit@k), with chance level.

  Alignment: ``td_errors[b, t] = δ_t = γ·V_t − V_{t−1}`` (``weighting.td_errors``) is the change
  of value caused by reading token ``x_t``, so it is attributed to ``x_t``, the same index as
  ``labels[t] = x_t`` and ``mutated_mask[t]`` (is ``x_t`` in the mutated span). Compute the TD
  errors without ``rewards``: the terminal ``δ_T = R − V_T`` measures the outcome, not ``x_T``.

  Per row, the response tokens (``mask``) are ranked by δ, most negative first (equal δ: the
  earlier position first); hit@k = one of the first ``k`` lies in the span (with ``k ≥ N`` every
  response token is taken). The row's chance level is the same probability for ``k`` positions
  drawn at random among its ``N`` response tokens, ``m`` of them in the span: ``m/N`` for k = 1,
  ``1 − C(N−m, k)/C(N, k)`` in general. Rows without a mutated response token (``m = 0``: e.g.
  correct samples, empty rows) are left out.

  Args:
    td_errors: ``[B, S]`` δ per target token (finite on the response).
    mask: ``[B, S]`` response mask.
    mutated_mask: ``[B, S]`` target-aligned mutated span.
    ks: the k of hit@k (static, positive ints).

  Returns:
    Per ``k``: ``hit@k_B`` and ``chance@k_B`` ``[B]`` (0 on rows left out) and their means over
    the counted rows ``hit@k``, ``chance@k`` (0 when none); ``valid_B`` ``[B]`` (1 = counted) and
    ``count``, all float32.
  """
  check_bxs_with_mask("td_errors", td_errors, mask)
  check_same_shape("mutated_mask", mutated_mask, "td_errors", td_errors)
  if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
    raise ValueError(f"ks must be positive ints, got {ks!r}")
  valid_BxS = bool_mask(mask)
  span_BxS = bool_mask(mutated_mask) & valid_BxS
  n_valid_B = jnp.sum(valid_BxS, axis=1, dtype=jnp.float32)
  n_span_B = jnp.sum(span_BxS, axis=1, dtype=jnp.float32)
  row_B = n_span_B > 0.0
  order_BxS = jnp.argsort(jnp.where(valid_BxS, f32(td_errors), jnp.inf), axis=1, stable=True)
  ranked_span_BxS = jnp.take_along_axis(span_BxS, order_BxS, axis=1)  # invalid ranked last
  count = jnp.sum(row_B, dtype=jnp.float32)
  out = {"valid_B": row_B.astype(jnp.float32), "count": count}
  for k in ks:
    hit_B = jnp.where(row_B, jnp.any(ranked_span_BxS[:, :k], axis=1), False).astype(jnp.float32)
    chance_B = jnp.where(row_B, _chance_of_hit(n_valid_B, n_span_B, k), 0.0)
    out.update({f"hit@{k}_B": hit_B, f"chance@{k}_B": chance_B,
                f"hit@{k}": _ratio(jnp.sum(hit_B), count),
                f"chance@{k}": _ratio(jnp.sum(chance_B), count)})
  return out


@jax.jit
def weight_lift(weights, valid, region_mask) -> dict[str, jax.Array]:
  """Mean weight on region targets ÷ mean weight on all valid targets (DESIGN §8).

  ``region_mask`` is target-aligned ``[B, S]``. With 2-D (target-aligned) weights a token ``x_t``
  is in the region iff ``region_mask[b, t]``; with per-term weights ``[B, S, n]`` the term
  ``(t, k)`` is iff its target ``x_{t+1+k}`` is, ``region_mask[b, t+1+k]``. Pass the critical
  span, or the mutated span when incorrect samples are trained on.

  Args:
    weights: ``[B, S]`` or ``[B, S, n]`` (e.g. the weights of a weighted policy step).
    valid: the shape of ``weights``: the response mask, or the per-term validity of the loss.
    region_mask: ``[B, S]`` target-aligned span.

  Returns:
    ``lift`` (0 without a valid region term or when the mean weight is 0), ``region_mean``,
    ``mean``, ``region_count``, ``count`` (valid terms), float32 scalars.
  """
  check_rank("weights", weights, (2, 3))
  check_same_shape("valid", valid, "weights", weights)
  region = region_terms("region_mask", region_mask, "weights", weights)
  valid = bool_mask(valid)
  in_region = valid & region
  weights = f32(weights)
  count = jnp.sum(valid, dtype=jnp.float32)
  region_count = jnp.sum(in_region, dtype=jnp.float32)
  mean = _ratio(jnp.sum(jnp.where(valid, weights, 0.0)), count)
  region_mean = _ratio(jnp.sum(jnp.where(in_region, weights, 0.0)), region_count)
  return {"lift": _ratio(region_mean, mean), "region_mean": region_mean, "mean": mean,
          "region_count": region_count, "count": count}


@jax.jit
def weight_entropy(weights, valid) -> dict[str, jax.Array]:
  """Entropy of the normalised (non-negative) weights over the valid terms.

  ``H = −Σ p log p`` (nats) with ``p = w/Σw`` over the N valid terms (0·log 0 = 0), and
  ``H / log N`` (the ``entropy`` of ``weighting.weight_stats``, from which both come): 1 for
  uniform weights, 0 for a single nonzero weight. Both are 0 when N ≤ 1 or Σw = 0.

  Args:
    weights: any shape, e.g. ``[B, S]`` or ``[B, S, n]``.
    valid: the same shape.

  Returns:
    ``entropy``, ``normalized``, ``count`` (N), float32 scalars.
  """
  check_same_shape("valid", valid, "weights", weights)
  normalized = weight_stats(weights, valid)["entropy"]
  count = jnp.sum(bool_mask(valid), dtype=jnp.float32)
  return {"entropy": normalized * jnp.log(jnp.maximum(count, 2.0)), "normalized": normalized,
          "count": count}


@jax.jit
def clipped_shares(weights, valid, *, min_weight, max_weight, rtol=CLIP_RTOL):
  """Shares of the valid terms whose weight sits at the lower and at the upper clip bound.

  A weight is at the minimum iff ``w ≤ min_weight + rtol·|min_weight|`` and at the maximum iff
  ``w ≥ max_weight − rtol·|max_weight|``. Clipped float32 weights equal the float32 bound
  exactly; the default ``rtol`` (1e-6, about 8 float32 ulps) also absorbs rounding in later
  float32 arithmetic, e.g. a product with a 0/1 mask or the sum of micro-batches. Weights cast
  to bfloat16 need ``rtol`` ≈ 4e-3. Bounds and ``rtol`` are traced.

  Args:
    weights: any shape, e.g. ``[B, S]`` or ``[B, S, n]``.
    valid: the same shape.
    min_weight, max_weight: the clip bounds (those of ``exp_weights``).

  Returns:
    ``at_min``, ``at_max`` (0 without a valid term) and ``count``, float32 scalars.
  """
  check_same_shape("valid", valid, "weights", weights)
  valid = bool_mask(valid)
  weights = f32(weights)
  lo, hi, rtol = f32(min_weight), f32(max_weight), f32(rtol)
  count = jnp.sum(valid, dtype=jnp.float32)
  at_min = jnp.sum(valid & (weights <= lo + rtol * jnp.abs(lo)), dtype=jnp.float32)
  at_max = jnp.sum(valid & (weights >= hi - rtol * jnp.abs(hi)), dtype=jnp.float32)
  return {"at_min": _ratio(at_min, count), "at_max": _ratio(at_max, count), "count": count}


@jax.jit
def token_error_rates(predictions, labels, valid, region_mask) -> dict[str, jax.Array]:
  """Per head, the error rate (prediction ≠ target) on region targets and on the other targets.

  Head ``k`` at position ``t`` predicts ``x_{t+1+k}``: its target is ``labels[b, t+1+k]`` and
  the term counts iff that label is not ``IGNORE_INDEX`` and ``valid[b, t+1+k]``
  (``losses.mtp_targets``, the alignment of the loss); it is a region term iff
  ``region_mask[b, t+1+k]``. With logits, the prediction is the argmax (the first maximum on
  ties).

  Args:
    predictions: ``[B, S, n, V]`` logits (any float dtype) or ``[B, S, n]`` int token ids.
    labels: ``[B, S]`` int, ``IGNORE_INDEX`` on prompt and padding.
    valid: ``[B, S]`` target-aligned, nonzero on counted tokens (the attention mask, or the
      response mask).
    region_mask: ``[B, S]`` target-aligned span (e.g. critical).

  Returns:
    ``region_error_n``, ``other_error_n`` (0 where the count is 0), ``region_count_n`` and
    ``other_count_n``, each ``[n]`` float32.
  """
  check_rank("predictions", predictions, (3, 4))
  if predictions.ndim == 3 and not jnp.issubdtype(predictions.dtype, jnp.integer):
    raise ValueError(f"predictions [B, S, n] must be int token ids, got {predictions.dtype}")
  check_rank("labels", labels, (2,))
  check_dim("predictions", predictions, 0, "labels", labels, 0)
  check_dim("predictions", predictions, 1, "labels", labels, 1)
  check_same_shape("valid", valid, "labels", labels)
  check_same_shape("region_mask", region_mask, "labels", labels)
  n = predictions.shape[2]
  if predictions.ndim == 4:
    predictions = jnp.argmax(predictions, axis=-1)
  targets_BxSxn, valid_BxSxn = mtp_targets(labels, bool_mask(valid), n)
  region_BxSxn = arrays.future_window(bool_mask(region_mask), n, False)
  wrong_BxSxn = predictions.astype(jnp.int32) != targets_BxSxn
  out = {}
  for name, terms_BxSxn in (("region", valid_BxSxn & region_BxSxn),
                            ("other", valid_BxSxn & ~region_BxSxn)):
    count_n = jnp.sum(terms_BxSxn, axis=(0, 1), dtype=jnp.float32)
    errors_n = jnp.sum(terms_BxSxn & wrong_BxSxn, axis=(0, 1), dtype=jnp.float32)
    out[f"{name}_error_n"] = _ratio(errors_n, count_n)
    out[f"{name}_count_n"] = count_n
  return out
