"""Parity tests for wmtp_jax.weighting.diagnostics against plain loops written here: random inputs
with prompt and padding masks (row 0 empty, row 1 a single response token, see
weighting_refs.make_mask), jit (two calls agree) and argument checks."""

import math

import numpy as np
import pytest
from weighting_refs import COMPOSITE, SIMPLE, future_valid_ref, make_mask

from wmtp_jax import IGNORE_INDEX
from wmtp_jax import weighting as W


def assert_dict_close(got, want, tol):
  assert set(got) == set(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], err_msg=key, **tol)


def assert_jit_repeatable(fn, *args, **kwargs):
  first, second = fn(*args, **kwargs), fn(*args, **kwargs)
  for key in first:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def row_means_ref(values, mask):
  out = []
  for b in range(values.shape[0]):
    xs = [float(values[b, t]) for t in range(values.shape[1]) if mask[b, t]]
    out.append(sum(xs) / len(xs) if xs else None)
  return out


def random_region(rng, mask, p=0.3):
  """A target-aligned span mask that also marks some prompt / padding tokens (to be ignored)."""
  return rng.random(mask.shape) < p


# Critic quality: mean response value, pairwise accuracy, AUROC.


def test_mean_response_value():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(7, 11)).astype(np.float32)
  mask = make_mask(rng, 7, 11, holes=True)
  want = [0.0 if m is None else m for m in row_means_ref(values, mask)]
  np.testing.assert_allclose(W.mean_response_value(values, mask), want, **SIMPLE)


def pairwise_ref(values_pos, mask_pos, values_neg, mask_neg):
  score, count = 0.0, 0
  for pos, neg in zip(row_means_ref(values_pos, mask_pos), row_means_ref(values_neg, mask_neg)):
    if pos is None or neg is None:
      continue
    count += 1
    score += 1.0 if pos > neg else 0.5 if pos == neg else 0.0
  return {"accuracy": score / count if count else 0.0, "count": count}


@pytest.mark.parametrize("ties", [False, True])
def test_pairwise_accuracy(ties):
  rng = np.random.default_rng(1)
  b = 9
  draw = (lambda s: rng.integers(0, 2, (b, s)).astype(np.float32)) if ties else (
      lambda s: rng.normal(size=(b, s)).astype(np.float32))
  values_pos, values_neg = draw(10), draw(7)
  mask_pos, mask_neg = make_mask(rng, b, 10, holes=True), make_mask(rng, b, 7, holes=False)
  mask_neg[0, 3] = True  # pair 0: empty pos row against a non-empty neg row (left out)
  if ties:  # pair 2: one token each, equal values
    mask_pos[2], mask_neg[2] = False, False
    mask_pos[2, 4], mask_neg[2, 1] = True, True
    values_pos[2, 4] = values_neg[2, 1] = 1.0
  want = pairwise_ref(values_pos, mask_pos, values_neg, mask_neg)
  got = W.pairwise_accuracy(values_pos, mask_pos, values_neg, mask_neg)
  assert_dict_close(got, want, SIMPLE)
  empty = W.pairwise_accuracy(values_pos, np.zeros_like(mask_pos), values_neg, mask_neg)
  assert_dict_close(empty, {"accuracy": 0.0, "count": 0.0}, SIMPLE)
  assert_jit_repeatable(W.pairwise_accuracy, values_pos, mask_pos, values_neg, mask_neg)


def auroc_pairs_ref(scores, labels, valid):
  """The O(N²) pair-count definition."""
  pos = [s for s, l, v in zip(scores, labels, valid) if v and l]
  neg = [s for s, l, v in zip(scores, labels, valid) if v and not l]
  wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
  return {"auroc": wins / (len(pos) * len(neg)) if pos and neg else 0.0,
          "n_pos": len(pos), "n_neg": len(neg)}


def auroc_ranks_ref(scores, labels):
  """Mann–Whitney U from mid-ranks of the pooled scores: U = Σ rank(pos) − n_pos(n_pos+1)/2."""
  n_pos = sum(1 for l in labels if l)
  n_neg = len(labels) - n_pos
  rank_sum = 0.0
  for s, l in zip(scores, labels):
    if l:
      below = sum(1 for x in scores if x < s)
      equal = sum(1 for x in scores if x == s)
      rank_sum += below + (equal + 1) / 2
  return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@pytest.mark.parametrize("ties", [False, True])
def test_auroc(ties):
  rng = np.random.default_rng(2)
  b = 57
  scores = (rng.integers(0, 5, b) if ties else rng.normal(size=b)).astype(np.float32)
  labels = rng.random(b) < 0.4
  scores[labels] += 0.5 * (not ties)
  valid = rng.random(b) < 0.8
  want = auroc_pairs_ref(scores, labels, valid)
  assert_dict_close(W.auroc(scores, labels, valid), want, SIMPLE)
  all_rows = auroc_pairs_ref(scores, labels, np.ones(b, bool))
  assert_dict_close(W.auroc(scores, labels.astype(np.int32)), all_rows, SIMPLE)
  np.testing.assert_allclose(all_rows["auroc"], auroc_ranks_ref(scores, labels), **SIMPLE)
  assert_jit_repeatable(W.auroc, scores, labels, valid)


def test_auroc_edge_cases():
  scores = np.array([0.3, 0.1, 0.7, 0.2], np.float32)
  one_class = W.auroc(scores, np.ones(4, bool))
  assert_dict_close(one_class, {"auroc": 0.0, "n_pos": 4.0, "n_neg": 0.0}, SIMPLE)
  perfect = W.auroc(scores, np.array([True, False, True, False]))
  np.testing.assert_allclose(perfect["auroc"], 1.0, **SIMPLE)
  np.testing.assert_allclose(W.auroc(np.ones(4, np.float32), np.array([1, 0, 1, 0]))["auroc"], 0.5,
                             **SIMPLE)
  # A positive above every negative, and invalid rows holding extreme scores.
  masked = W.auroc(np.array([5.0, -9.0, 0.0, 9.0], np.float32), np.array([1, 0, 0, 1]),
                   np.array([1, 1, 1, 0]))
  assert_dict_close(masked, {"auroc": 1.0, "n_pos": 1.0, "n_neg": 2.0}, SIMPLE)


# Localization of value drops in the mutated span.


def localization_ref(td, mask, mutated, ks):
  out = {"valid_B": [], "count": 0}
  for k in ks:
    out.update({f"hit@{k}_B": [], f"chance@{k}_B": []})
  for b in range(td.shape[0]):
    positions = [t for t in range(td.shape[1]) if mask[b, t]]
    span = [t for t in positions if mutated[b, t]]
    counted = bool(span)
    out["valid_B"].append(float(counted))
    out["count"] += counted
    ranked = sorted(positions, key=lambda t: (float(td[b, t]), t))
    for k in ks:
      hit = counted and any(t in span for t in ranked[:k])
      n, m, draws = len(positions), len(span), min(k, len(positions))
      chance = 1.0 - math.comb(n - m, draws) / math.comb(n, draws) if counted else 0.0
      out[f"hit@{k}_B"].append(float(hit))
      out[f"chance@{k}_B"].append(chance)
  for k in ks:
    for name in (f"hit@{k}", f"chance@{k}"):
      out[name] = sum(out[name + "_B"]) / out["count"] if out["count"] else 0.0
  return out


@pytest.mark.parametrize("ties,holes", [(False, False), (True, True)])
def test_localization_hits(ties, holes):
  rng = np.random.default_rng(3)
  b, s = 16, 40
  td = (rng.integers(-2, 2, (b, s)) if ties else rng.normal(size=(b, s))).astype(np.float32)
  mask = make_mask(rng, b, s, holes=holes)
  mutated = random_region(rng, mask, 0.15)
  mutated[1] = mask[1]  # the single-token row: its token is mutated (hit and chance 1)
  mutated[2] = False  # a row without a mutated token (left out)
  ks = (1, 3, 20)
  want = localization_ref(td, mask, mutated, ks)
  got = W.localization_hits(td, mask, mutated, ks=ks)
  assert_dict_close(got, want, SIMPLE)
  assert got["count"] >= 6 and got["valid_B"][1] == 1 and got["hit@1_B"][1] == 1
  counted = np.asarray(got["valid_B"]) == 1
  for k in (1, 3):  # the inputs exercise both outcomes
    assert set(np.asarray(got[f"hit@{k}_B"])[counted]) == {0.0, 1.0}
  assert_jit_repeatable(W.localization_hits, td, mask, mutated)


def test_localization_follows_td_errors():
  """The value drop caused by reading x_t (δ_t = V_t − V_{t−1}) is attributed to x_t."""
  values = np.array([[0.5, 0.5, 0.6, 0.6, 0.1, 0.1, 0.2]], np.float32)  # drop when x_4 is read
  mask = np.array([[0, 0, 1, 1, 1, 1, 1]], bool)  # prompt x_0, x_1
  mutated = np.zeros_like(mask)
  mutated[0, 4] = True
  got = W.localization_hits(W.td_errors(values, mask), mask, mutated, ks=(1,))
  assert_dict_close({k: got[k] for k in ("hit@1", "chance@1", "count")},
                    {"hit@1": 1.0, "chance@1": 0.2, "count": 1.0}, SIMPLE)


def test_localization_without_span_rows():
  td = np.zeros((3, 5), np.float32)
  mask = np.ones((3, 5), bool)
  got = W.localization_hits(td, mask, np.zeros_like(mask))
  for key, value in got.items():
    np.testing.assert_array_equal(value, np.zeros_like(value), err_msg=key)


# Weights of a weighted policy: lift, entropy, clipped shares.


def lift_ref(weights, valid, region):
  if weights.ndim == 3:  # per term (t, k): the region of its target x_{t+1+k}
    region = future_valid_ref(region, weights.shape[2])
  all_w = [float(w) for w, v in zip(weights.reshape(-1), valid.reshape(-1)) if v]
  region_w = [float(w) for w, v, r in zip(weights.reshape(-1), valid.reshape(-1),
                                          region.reshape(-1)) if v and r]
  mean = sum(all_w) / len(all_w) if all_w else 0.0
  region_mean = sum(region_w) / len(region_w) if region_w else 0.0
  return {"lift": region_mean / mean if region_w and mean > 0 else 0.0,
          "region_mean": region_mean, "mean": mean, "region_count": len(region_w),
          "count": len(all_w)}


@pytest.mark.parametrize("n", [None, 1, 3])
def test_weight_lift(n):
  rng = np.random.default_rng(4 + (n or 0))
  b, s = 6, 13
  mask = make_mask(rng, b, s, holes=True)
  region = random_region(rng, mask, 0.4)
  shape = (b, s) if n is None else (b, s, n)
  valid = mask if n is None else future_valid_ref(mask, n)
  weights = rng.uniform(0.1, 3.0, shape).astype(np.float32)
  weights[~valid] = 100.0  # garbage outside the valid terms must not count
  want = lift_ref(weights, valid, region)
  assert_dict_close(W.weight_lift(weights, valid, region), want, COMPOSITE)
  assert_jit_repeatable(W.weight_lift, weights, valid, region)
  nothing = W.weight_lift(weights, valid, np.zeros_like(region))
  assert_dict_close(nothing, lift_ref(weights, valid, np.zeros_like(region)), COMPOSITE)
  assert float(nothing["lift"]) == 0.0 and float(nothing["region_count"]) == 0.0
  zero = W.weight_lift(np.zeros(shape, np.float32), valid, region)
  assert float(zero["lift"]) == 0.0


def test_weight_lift_single_token():
  weights = np.array([[0.0, 2.0, 1.0, 5.0]], np.float32)
  valid = np.array([[0, 1, 1, 0]], bool)
  region = np.array([[1, 1, 0, 1]], bool)
  assert_dict_close(W.weight_lift(weights, valid, region),
                    {"lift": 2.0 / 1.5, "region_mean": 2.0, "mean": 1.5, "region_count": 1.0,
                     "count": 2.0}, SIMPLE)


def entropy_ref(weights, valid):
  ws = [float(w) for w, v in zip(weights.reshape(-1), valid.reshape(-1)) if v]
  total = sum(ws)
  if len(ws) <= 1 or total <= 0:
    return {"entropy": 0.0, "normalized": 0.0, "count": len(ws)}
  entropy = -sum(w / total * math.log(w / total) for w in ws if w > 0)
  return {"entropy": entropy, "normalized": entropy / math.log(len(ws)), "count": len(ws)}


@pytest.mark.parametrize("shape", [(6, 13), (6, 13, 3), (1, 1)])
def test_weight_entropy(shape):
  rng = np.random.default_rng(5)
  weights = rng.uniform(0.0, 3.0, shape).astype(np.float32)
  weights.reshape(-1)[::4] = 0.0
  mask = make_mask(rng, shape[0], shape[1], holes=True)
  valid = mask if len(shape) == 2 else future_valid_ref(mask, shape[2])
  for v in (valid, np.zeros_like(valid), np.ones_like(valid)):
    assert_dict_close(W.weight_entropy(weights, v), entropy_ref(weights, v), COMPOSITE)
  uniform = W.weight_entropy(np.ones((2, 4), np.float32), np.ones((2, 4), bool))
  assert_dict_close(uniform, {"entropy": math.log(8), "normalized": 1.0, "count": 8.0}, SIMPLE)
  assert_jit_repeatable(W.weight_entropy, weights, valid)


def clipped_ref(weights, valid, lo, hi, rtol):
  ws = [float(w) for w, v in zip(weights.reshape(-1), valid.reshape(-1)) if v]
  if not ws:
    return {"at_min": 0.0, "at_max": 0.0, "count": 0}
  return {"at_min": sum(w <= lo + rtol * abs(lo) for w in ws) / len(ws),
          "at_max": sum(w >= hi - rtol * abs(hi) for w in ws) / len(ws), "count": len(ws)}


@pytest.mark.parametrize("shape", [(6, 13), (6, 13, 3)])
def test_clipped_shares(shape):
  rng = np.random.default_rng(6)
  lo, hi = 0.1, 3.0
  adv = rng.normal(size=shape[:2]).astype(np.float32)
  mask = make_mask(rng, shape[0], shape[1], holes=False)
  valid = mask if len(shape) == 2 else future_valid_ref(mask, shape[2])
  weights = np.array(W.exp_weights(adv, mask, beta=0.5, min_weight=lo, max_weight=hi))
  if len(shape) == 3:
    weights = np.repeat(weights[:, :, None], shape[2], axis=2)
  weights[~valid] = lo  # terms outside `valid` at the bound must not count
  want = clipped_ref(np.asarray(weights, np.float32).astype(np.float64), valid,
                     np.float32(lo), np.float32(hi), 1e-6)
  assert 0 < want["at_min"] < 1 and 0 < want["at_max"] < 1
  got = W.clipped_shares(weights, valid, min_weight=lo, max_weight=hi)
  assert_dict_close(got, want, SIMPLE)
  assert_jit_repeatable(W.clipped_shares, weights, valid, min_weight=lo, max_weight=hi)
  # Rounding inside the tolerance counts, a step outside it does not.
  near = np.array([[lo * (1 + 5e-7), lo * (1 + 1e-5), hi * (1 - 5e-7), hi * (1 - 1e-5)]],
                  np.float32)
  shares = W.clipped_shares(near, np.ones_like(near, bool), min_weight=lo, max_weight=hi)
  assert_dict_close(shares, {"at_min": 0.25, "at_max": 0.25, "count": 4.0}, SIMPLE)
  empty = W.clipped_shares(weights, np.zeros_like(valid), min_weight=lo, max_weight=hi)
  assert_dict_close(empty, {"at_min": 0.0, "at_max": 0.0, "count": 0.0}, SIMPLE)


# Policy: token error rate on region vs other targets, per head.


def error_rates_ref(predictions, labels, valid, region):
  b_size, s_size, n = predictions.shape
  out = {}
  for name in ("region", "other"):
    out[f"{name}_error_n"], out[f"{name}_count_n"] = [], []
  for k in range(n):
    counts = {"region": [0, 0], "other": [0, 0]}
    for b in range(b_size):
      for t in range(s_size):
        j = t + 1 + k  # head k at position t predicts x_{t+1+k}
        if j >= s_size or labels[b, j] == IGNORE_INDEX or not valid[b, j]:
          continue
        name = "region" if region[b, j] else "other"
        counts[name][0] += int(predictions[b, t, k] != labels[b, j])
        counts[name][1] += 1
    for name, (errors, count) in counts.items():
      out[f"{name}_error_n"].append(errors / count if count else 0.0)
      out[f"{name}_count_n"].append(count)
  return out


def test_token_error_rates():
  rng = np.random.default_rng(7)
  b, s, n, v = 6, 12, 3, 5
  response = make_mask(rng, b, s, holes=False)
  tokens = rng.integers(0, v, (b, s))
  labels = np.where(response, tokens, IGNORE_INDEX)
  attention = np.zeros((b, s), np.int32)
  for row in range(b):  # non-padding: everything up to the response's end (or a random length)
    end = np.nonzero(response[row])[0].max() + 1 if response[row].any() else rng.integers(0, s)
    attention[row, :end] = 1
  attention[3, :] = 0  # a padding row whose labels are still set: attention excludes them
  labels[3] = tokens[3]
  region = random_region(rng, response, 0.4)
  logits = rng.normal(size=(b, s, n, v)).astype(np.float32)
  # Make some predictions right: raise the target's logit at a third of the valid terms.
  for row, t, k in np.ndindex(b, s, n):
    if t + 1 + k < s and labels[row, t + 1 + k] != IGNORE_INDEX and rng.random() < 0.35:
      logits[row, t, k, labels[row, t + 1 + k]] += 10.0
  predictions = logits.argmax(-1)
  want = error_rates_ref(predictions, labels, attention, region)
  assert 0 < min(want["region_count_n"]) and 0 < min(want["other_count_n"])
  assert_dict_close(W.token_error_rates(logits, labels, attention, region), want, SIMPLE)
  assert_dict_close(W.token_error_rates(predictions.astype(np.int32), labels, attention, region),
                    want, SIMPLE)
  assert_jit_repeatable(W.token_error_rates, logits, labels, attention, region)
  nothing = W.token_error_rates(logits, np.full_like(labels, IGNORE_INDEX), attention, region)
  for key, value in nothing.items():
    np.testing.assert_array_equal(value, np.zeros(n), err_msg=key)


# Argument checks: a ValueError naming the argument.


@pytest.mark.parametrize("call,name", [
    (lambda: W.mean_response_value(np.zeros((2, 3)), np.zeros((2, 4))), "mask"),
    (lambda: W.mean_response_value(np.zeros(3), np.zeros(3)), "values"),
    (lambda: W.pairwise_accuracy(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 3)),
                                 np.zeros((3, 3))), "values_neg"),
    (lambda: W.pairwise_accuracy(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)),
                                 np.zeros((2, 4))), "mask_neg"),
    (lambda: W.auroc(np.zeros((2, 3)), np.zeros((2, 3))), "scores"),
    (lambda: W.auroc(np.zeros(3), np.zeros(4)), "labels"),
    (lambda: W.auroc(np.zeros(3), np.zeros(3), np.zeros(2)), "valid"),
    (lambda: W.localization_hits(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4))),
     "mutated_mask"),
    (lambda: W.localization_hits(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)), ks=(0,)),
     "ks"),
    (lambda: W.weight_lift(np.zeros((2, 3, 2)), np.zeros((2, 3)), np.zeros((2, 3))), "valid"),
    (lambda: W.weight_lift(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4))), "region_mask"),
    (lambda: W.weight_lift(np.zeros(3), np.zeros(3), np.zeros((1, 3))), "weights"),
    (lambda: W.weight_entropy(np.zeros((2, 3)), np.zeros((3, 2))), "valid"),
    (lambda: W.clipped_shares(np.zeros((2, 3)), np.zeros(6), min_weight=0.1, max_weight=3.0),
     "valid"),
    (lambda: W.token_error_rates(np.zeros((2, 3, 2, 5)), np.zeros((2, 4), np.int32),
                                 np.zeros((2, 4)), np.zeros((2, 4))), "predictions"),
    (lambda: W.token_error_rates(np.zeros((2, 3, 2)), np.zeros((2, 3), np.int32),
                                 np.zeros((2, 3)), np.zeros((2, 3))), "predictions"),
    (lambda: W.token_error_rates(np.zeros((2, 3, 2), np.int32), np.zeros((2, 3), np.int32),
                                 np.zeros((2, 2)), np.zeros((2, 3))), "valid"),
    (lambda: W.token_error_rates(np.zeros((2, 3, 2), np.int32), np.zeros((2, 3), np.int32),
                                 np.zeros((2, 3)), np.zeros((3,))), "region_mask"),
])
def test_bad_shapes(call, name):
  with pytest.raises(ValueError, match=name):
    call()
