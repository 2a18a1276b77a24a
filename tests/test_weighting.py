"""Parity tests for wmtp_jax.weighting against plain per-token Python loops (DESIGN.md §3).

Every reference below is a literal loop over rows, positions and heads, written from the formula
in DESIGN.md, not a vectorised re-derivation. Tolerances: 1e-5 for simple functions, 1e-4 for
composite ones (fp32).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax import weighting as W

SIMPLE = dict(rtol=1e-5, atol=1e-5)
COMPOSITE = dict(rtol=1e-4, atol=1e-4)

# (B, S, holes): holes=True punches gaps into the response part of the mask.
SHAPES = [(6, 13, False), (6, 13, True), (3, 1, False), (1, 9, True)]


def make_mask(rng, b, s, holes):
  """Prompt (leading zeros) + response + right padding; row 0 empty, row 1 one valid token."""
  mask = np.zeros((b, s), bool)
  for row in range(b):
    prompt = rng.integers(0, s + 1)
    length = rng.integers(0, s - prompt + 1)
    mask[row, prompt:prompt + length] = True
    if holes and length > 2:
      mask[row, prompt + 1:prompt + length - 1] &= rng.random(length - 2) < 0.6
  if b > 1:
    mask[0] = False
    mask[1] = False
    mask[1, rng.integers(0, s)] = True
  return mask


def make_case(seed, b, s, holes):
  rng = np.random.default_rng(seed)
  values = rng.uniform(0.0, 1.0, (b, s)).astype(np.float32)
  rewards = rng.integers(0, 2, b).astype(np.float32)
  return values, make_mask(rng, b, s, holes), rewards


def last_valid(mask_row):
  valid = [t for t in range(len(mask_row)) if mask_row[t]]
  return valid[-1] if valid else None


# ----------------------------------------------------------------------- loop references


def td_ref(values, mask, gamma, initial_value, rewards=None):
  b_size, s_size = values.shape
  out = np.zeros((b_size, s_size))
  for b in range(b_size):
    last = last_valid(mask[b])
    for t in range(s_size):
      if not mask[b, t]:
        continue
      prev = initial_value if t == 0 else float(values[b, t - 1])
      delta = gamma * float(values[b, t]) - prev
      if rewards is not None and t == last:
        delta = float(rewards[b]) - float(values[b, t])
      out[b, t] = delta
  return out


def gae_ref(values, mask, gamma, lam, initial_value, rewards=None):
  delta = td_ref(values, mask, gamma, initial_value, rewards)
  out = np.zeros_like(delta)
  for b in range(values.shape[0]):
    last = last_valid(mask[b])
    if last is None:
      continue
    adv = 0.0
    for t in range(last, -1, -1):
      adv = delta[b, t] if t == last else delta[b, t] + gamma * lam * adv
      out[b, t] = adv * mask[b, t]
  return out


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


def mean_std_ref(xs):
  n = len(xs)
  mean = sum(xs) / n
  std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
  return mean, std


def exp_weights_ref(adv, mask, beta, lo, hi, mean=None, std=None):
  flat_a, flat_m = adv.reshape(-1), mask.reshape(-1)
  xs = [float(flat_a[i]) for i in range(flat_a.size) if flat_m[i]]
  out = np.zeros(flat_a.size)
  if mean is None and len(xs) <= 1:
    return flat_m.astype(np.float64).reshape(adv.shape)
  if mean is None:
    mean, std = mean_std_ref(xs)
  for i in range(flat_a.size):
    if flat_m[i]:
      z = (float(flat_a[i]) - mean) / (std + 1e-8)
      out[i] = min(max(math.exp(z / beta), lo), hi)
  return out.reshape(adv.shape)


def future_valid_ref(mask, n):
  b_size, s_size = mask.shape
  valid = np.zeros((b_size, s_size, n), bool)
  for b in range(b_size):
    for t in range(s_size):
      for k in range(n):
        valid[b, t, k] = t + 1 + k <= s_size - 1 and bool(mask[b, t + 1 + k])
  return valid


def rho1_ref(policy_ce, ref_ce, mask, k_percent, mode, head0_always):
  b_size, s_size, n = policy_ce.shape
  valid = future_valid_ref(mask, n)
  excess = np.zeros(policy_ce.shape, np.float32)
  for b in range(b_size):
    for t in range(s_size):
      for k in range(n):
        if not valid[b, t, k]:
          continue
        diff = np.float32(policy_ce[b, t, k]) - np.float32(ref_ce[b, t + k])
        excess[b, t, k] = {"signed": diff, "absolute": abs(diff),
                           "difficult": ref_ce[b, t + k]}[mode]
  w = np.zeros(policy_ce.shape, np.float32)
  for k in range(n):
    terms = [excess[b, t, k] for b in range(b_size) for t in range(s_size) if valid[b, t, k]]
    if not terms or k_percent == 0:
      continue
    threshold = np.quantile(np.array(terms, np.float32), 1 - k_percent)
    for b in range(b_size):
      for t in range(s_size):
        w[b, t, k] = float(valid[b, t, k] and excess[b, t, k] >= threshold)
  if head0_always:
    w[..., 0] = valid[..., 0]
  return w


def normalize_ref(w, valid, temperature, eps, max_weight):
  flat_w, flat_v = w.reshape(-1), valid.reshape(-1)
  idx = [i for i in range(flat_w.size) if flat_v[i]]
  out = np.zeros(flat_w.size)
  if not idx:
    return out.reshape(w.shape)
  mean, std = mean_std_ref([float(flat_w[i]) for i in idx])
  z = {i: (float(flat_w[i]) - mean) / (std + 1e-8) / temperature for i in idx}
  top = max(z.values())
  total = sum(math.exp(z[i] - top) for i in idx)
  clipped = {i: min(max(math.exp(z[i] - top) / total * len(idx), eps), max_weight) for i in idx}
  mean_clipped = sum(clipped.values()) / len(idx)
  for i in idx:
    out[i] = clipped[i] / mean_clipped
  return out.reshape(w.shape)


def rho1_continuous_ref(policy_ce, ref_ce, mask, percentile, alpha, normalize):
  b_size, s_size, n = policy_ce.shape
  valid = future_valid_ref(mask, n)
  score = np.zeros(policy_ce.shape, np.float32)
  for b in range(b_size):
    for t in range(s_size):
      for k in range(n):
        if valid[b, t, k]:
          score[b, t, k] = abs(np.float32(ref_ce[b, t + k]) - np.float32(policy_ce[b, t, k]))
  w = np.zeros(policy_ce.shape)
  for k in range(n):
    terms = [score[b, t, k] for b in range(b_size) for t in range(s_size) if valid[b, t, k]]
    if not terms:
      continue
    threshold = np.percentile(np.array(terms, np.float32), percentile)
    for b in range(b_size):
      for t in range(s_size):
        if valid[b, t, k]:
          s = float(score[b, t, k])
          w[b, t, k] = (s if s > threshold else 0.0) + alpha
  return normalize_ref(w, valid, 1.0, 0.05, 3.0) if normalize else w


def stats_ref(x, mask):
  xs = [float(v) for v, m in zip(x.reshape(-1), mask.reshape(-1)) if m]
  if not xs:
    return {"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
  mean, std = mean_std_ref(xs)
  return {"mean": mean, "std": std, "min": min(xs), "max": max(xs)}


def entropy_ref(w, mask):
  ws = [float(v) for v, m in zip(w.reshape(-1), mask.reshape(-1)) if m]
  total = sum(ws)
  if len(ws) <= 1 or total <= 0:
    return 0.0
  return -sum(v / total * math.log(v / total) for v in ws if v > 0) / math.log(len(ws))


# ------------------------------------------------------------------------ TD, GAE, returns


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
  for impl in (W._reverse_recurrence_assoc, W._reverse_recurrence_scan):
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


# ---------------------------------------------------------------------- exp weights, EMA


@pytest.mark.parametrize("b,s,holes", SHAPES)
def test_exp_weights_batch_stats(b, s, holes):
  values, mask, _ = make_case(6, b, s, holes)
  adv = (values - 0.5) * 4.0
  got = W.exp_weights(adv, mask, beta=0.9, min_weight=0.1, max_weight=5.0)
  np.testing.assert_allclose(got, exp_weights_ref(adv, mask, 0.9, 0.1, 5.0), **COMPOSITE)


def test_exp_weights_external_stats_rank3():
  rng = np.random.default_rng(7)
  adv = rng.normal(size=(3, 5, 4)).astype(np.float32)
  mask = rng.random((3, 5, 4)) < 0.7
  got = W.exp_weights(adv, mask, mean=0.2, std=0.7)
  np.testing.assert_allclose(got, exp_weights_ref(adv, mask, 1.0, 0.1, 3.0, 0.2, 0.7), **SIMPLE)
  np.testing.assert_allclose(W.exp_weights(adv, mask),
                             exp_weights_ref(adv, mask, 1.0, 0.1, 3.0), **COMPOSITE)


def test_exp_weights_at_most_one_valid_token():
  adv = np.array([[3.0, -2.0, 7.0]], np.float32)
  for mask in ([[0, 0, 0]], [[0, 1, 0]]):
    mask = np.array(mask, np.float32)
    np.testing.assert_array_equal(W.exp_weights(adv, mask), mask)
  # External statistics still apply to a single valid token.
  got = W.exp_weights(adv, np.array([[0, 1, 0]]), mean=0.0, std=1.0)
  np.testing.assert_allclose(got, [[0.0, math.exp(-2.0), 0.0]], **SIMPLE)


def ema_ref(batches, momentum, warmup):
  mean, std, count = 0.0, 1.0, 0
  history = []
  for x, mask in batches:
    xs = [float(v) for v, m in zip(x.reshape(-1), mask.reshape(-1)) if m]
    if xs:
      batch_mean = sum(xs) / len(xs)
      var = sum(v * v for v in xs) / len(xs) - batch_mean ** 2
      batch_std = math.sqrt(max(var, 1e-8))
      count += 1
      if count <= warmup:
        r = (count - 1) / warmup
        mean, std = r * mean + (1 - r) * batch_mean, r * std + (1 - r) * batch_std
      else:
        mean = (1 - momentum) * mean + momentum * batch_mean
        std = (1 - momentum) * std + momentum * batch_std
    history.append((mean, std, count))
  return history


def test_ema_through_warmup_and_after():
  rng = np.random.default_rng(8)
  batches = []
  for step in range(9):
    x = rng.normal(loc=step * 0.3, scale=1.0 + step * 0.1, size=(4, 7)).astype(np.float32)
    mask = rng.random((4, 7)) < 0.6
    if step == 3:
      mask[:] = False  # zero valid tokens: state unchanged
    batches.append((x, mask))
  state = W.ema_init()
  assert state.mean.dtype == jnp.float32 and state.count.dtype == jnp.int32
  got = []
  for x, mask in batches:
    state = W.ema_update(state, x, mask, momentum=0.2, warmup_steps=4)
    got.append((float(state.mean), float(state.std), int(state.count)))
  for (gm, gs, gc), (wm, ws, wc) in zip(got, ema_ref(batches, 0.2, 4)):
    assert gc == wc
    np.testing.assert_allclose([gm, gs], [wm, ws], **COMPOSITE)
  assert got[3] == got[2]


def test_ema_from_moments_summed_over_micro_batches():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  mask = rng.random((4, 6)) < 0.5
  parts = [W.masked_moments(x[i:i + 1], mask[i:i + 1]) for i in range(4)]
  total = jax.tree.map(lambda *leaves: sum(leaves), *parts)
  whole = W.masked_moments(x, mask)
  assert int(total.count) == int(mask.sum()) == int(whole.count)
  state = W.ema_update(W.ema_init(), x, mask)
  state_parts = W.ema_update_from_moments(W.ema_init(), total)
  np.testing.assert_allclose([state.mean, state.std], [state_parts.mean, state_parts.std],
                             **SIMPLE)


# ------------------------------------------------------------------------------- Rho-1


@pytest.mark.parametrize("size", [1, 2, 3, 10, 11, 26, 101])
@pytest.mark.parametrize("q", [0.0, 0.25, 0.4, 0.5, 0.7, 0.9, 1.0])
def test_per_head_quantile_matches_numpy(size, q):
  rng = np.random.default_rng(size)
  x = np.stack([rng.normal(size=size), rng.integers(-2, 3, size),  # heavy ties
                np.full(size, -0.0), rng.normal(size=size) * 1e4], axis=-1).astype(np.float32)
  valid = np.ones_like(x, bool)
  valid[:, 3] = rng.random(size) < 0.5
  got = W.per_head_quantile(x[None], valid[None], q)
  for k in range(4):
    terms = x[valid[:, k], k]
    want = np.quantile(terms, q) if terms.size else np.nan
    np.testing.assert_allclose(got[k], want, **SIMPLE)


def test_per_head_quantile_no_valid_term_is_nan():
  got = W.per_head_quantile(np.ones((2, 3, 2), np.float32), np.zeros((2, 3, 2), bool), 0.5)
  assert np.isnan(np.asarray(got)).all()


def make_ce(seed, b, s, n, ties):
  rng = np.random.default_rng(seed)
  if ties:
    policy = rng.integers(0, 4, (b, s, n)).astype(np.float32)
    ref = rng.integers(0, 3, (b, s)).astype(np.float32)
  else:
    policy = rng.gamma(2.0, 1.0, (b, s, n)).astype(np.float32)
    ref = rng.gamma(2.0, 1.0, (b, s)).astype(np.float32)
  return policy, ref, make_mask(rng, b, s, holes=True)


@pytest.mark.parametrize("mode", W.RHO1_MODES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k_percent", [0.0, 0.3, 0.6, 1.0])
def test_rho1_weights(mode, ties, k_percent):
  policy, ref, mask = make_ce(10, 6, 23, 4, ties)
  got = W.rho1_weights(policy, ref, mask, k_percent=k_percent, mode=mode)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, rho1_ref(policy, ref, mask, k_percent, mode, False))


def test_rho1_edge_cases():
  policy, ref, mask = make_ce(11, 4, 9, 3, ties=False)
  valid = future_valid_ref(mask, 3)
  np.testing.assert_array_equal(W.future_valid(mask, 3), valid)
  np.testing.assert_array_equal(W.rho1_weights(policy, ref, mask, k_percent=0.0), 0.0)
  np.testing.assert_array_equal(W.rho1_weights(policy, ref, mask, k_percent=1.0), valid)
  got = W.rho1_weights(policy, ref, mask, k_percent=0.0, head0_always=True)
  np.testing.assert_array_equal(got[..., 0], valid[..., 0])
  np.testing.assert_array_equal(got[..., 1:], 0.0)
  got = W.rho1_weights(policy, ref, mask, k_percent=0.5, head0_always=True)
  np.testing.assert_array_equal(got, rho1_ref(policy, ref, mask, 0.5, "signed", True))
  # S = 1: no term has a target; a head with no valid term is all 0.
  np.testing.assert_array_equal(
      W.rho1_weights(policy[:, :1], ref[:, :1], mask[:, :1]), np.zeros((4, 1, 3)))
  # Keeps the highest excess (the paper), not the lowest.
  policy = np.array([[[5.0], [1.0], [3.0], [0.0]]], np.float32)
  got = W.rho1_weights(policy, np.zeros((1, 4), np.float32), np.ones((1, 4)), k_percent=0.5)
  np.testing.assert_array_equal(got[0, :, 0], [1.0, 0.0, 1.0, 0.0])


def test_rho1_threshold_on_a_sample_is_kept():
  # k_percent=0.4 with 26 valid terms: the index 0.6·25 = 15 is integral, but float32(0.6)·25
  # rounds above 15. numpy returns x_(15) exactly and keeps it; so must we.
  rng = np.random.default_rng(20)
  policy = rng.permutation(27).astype(np.float32)[None, :, None]
  got = W.rho1_weights(policy, np.zeros((1, 27), np.float32), np.ones((1, 27)), k_percent=0.4)
  want = rho1_ref(policy, np.zeros((1, 27)), np.ones((1, 27)), 0.4, "signed", False)
  assert want.sum() == 11
  np.testing.assert_array_equal(got, want)


def test_selection_ratio_per_head():
  policy, ref, mask = make_ce(12, 5, 11, 3, ties=False)
  valid = future_valid_ref(mask, 3)
  w = np.asarray(W.rho1_weights(policy, ref, mask, k_percent=0.6))
  want = [sum(w[b, t, k] > 0 for b in range(5) for t in range(11) if valid[b, t, k])
          / max(sum(valid[b, t, k] for b in range(5) for t in range(11)), 1) for k in range(3)]
  np.testing.assert_allclose(W.selection_ratio_per_head(w, valid), want, **SIMPLE)


def test_weight_histogram():
  rng = np.random.default_rng(5)
  w = rng.uniform(-0.5, 3.5, size=(4, 9, 3)).astype(np.float32)
  w[0, 0, 0], w[0, 0, 1] = 3.0, 0.0  # exactly the upper bound and 0
  valid = rng.random((4, 9, 3)) < 0.7
  want = np.zeros(30)
  for b, t, k in np.ndindex(*w.shape):
    if valid[b, t, k]:
      want[min(max(int(np.floor(w[b, t, k] * 30 / 3.0)), 0), 29)] += 1  # width 3.0 / 30
  got = W.weight_histogram(w, valid, upper=3.0)
  np.testing.assert_array_equal(got, want)
  assert got.sum() == valid.sum()


@pytest.mark.parametrize("normalize", [False, True])
def test_rho1_continuous_weights(normalize):
  policy, ref, mask = make_ce(13, 6, 17, 4, ties=False)
  got = W.rho1_continuous_weights(policy, ref, mask, percentile=70.0, alpha=0.5,
                                  normalize=normalize)
  want = rho1_continuous_ref(policy, ref, mask, 70.0, 0.5, normalize)
  np.testing.assert_allclose(got, want, **COMPOSITE)


# ----------------------------------------------------------------- softmax heads, normalise


@pytest.mark.parametrize("b,s,holes", SHAPES)
def test_softmax_head_weights(b, s, holes):
  scores, mask, _ = make_case(14, b, s, holes)
  scores = (scores - 0.5) * 6.0
  got = W.softmax_head_weights(scores, mask, 3, temperature=0.7)
  want = np.zeros((b, s, 3))
  for row in range(b):
    for t in range(s):
      heads = [k for k in range(3) if t + 1 + k < s and mask[row, t + 1 + k]]
      exps = {k: math.exp(float(scores[row, t + 1 + k]) / 0.7) for k in heads}
      for k in heads:
        want[row, t, k] = exps[k] / sum(exps.values())
  np.testing.assert_allclose(got, want, **SIMPLE)


@pytest.mark.parametrize("n_valid", [0, 1, 2, 40])
def test_normalize_weights(n_valid):
  rng = np.random.default_rng(15)
  w = rng.gamma(1.0, 1.0, (4, 5, 3)).astype(np.float32)
  valid = np.zeros(60, bool)
  valid[rng.permutation(60)[:n_valid]] = True
  valid = valid.reshape(4, 5, 3)
  got = W.normalize_weights(w, valid, temperature=0.5, eps=0.05, max_weight=3.0)
  np.testing.assert_allclose(got, normalize_ref(w, valid, 0.5, 0.05, 3.0), **COMPOSITE)


# ------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("b,s,holes", SHAPES)
def test_stats(b, s, holes):
  values, mask, _ = make_case(16, b, s, holes)
  for row_mask in (mask, np.zeros_like(mask)):
    got = W.weight_stats(values, row_mask)
    want = stats_ref(values, row_mask)
    want["entropy"] = entropy_ref(values, row_mask)
    assert set(got) == set(want)
    for key in want:
      np.testing.assert_allclose(got[key], want[key], err_msg=key, **COMPOSITE)
    got_td = W.td_stats(values, row_mask)
    assert set(got_td) == {"mean", "std", "min", "max"}


def test_entropy_extremes():
  mask = np.ones((1, 4))
  np.testing.assert_allclose(W.weight_stats(np.full((1, 4), 2.0), mask)["entropy"], 1.0, **SIMPLE)
  np.testing.assert_allclose(
      W.weight_stats(np.array([[0.0, 3.0, 0.0, 0.0]]), mask)["entropy"], 0.0, **SIMPLE)


def test_explained_variance():
  values, mask, rewards = make_case(17, 6, 13, False)
  returns = W.lambda_returns(values, rewards, mask)
  ret = [float(r) for r, m in zip(np.asarray(returns).reshape(-1), mask.reshape(-1)) if m]
  res = [float(r - v) for r, v, m in zip(np.asarray(returns).reshape(-1), values.reshape(-1),
                                         mask.reshape(-1)) if m]
  want = 1.0 - mean_std_ref(res)[1] ** 2 / mean_std_ref(ret)[1] ** 2
  np.testing.assert_allclose(W.explained_variance(values, returns, mask), want, **COMPOSITE)
  np.testing.assert_allclose(W.explained_variance(returns, returns, mask), 1.0, **SIMPLE)
  assert float(W.explained_variance(values, returns, np.zeros_like(mask))) == 0.0


# --------------------------------------------------------------- bad input, dtypes, jit


def test_bad_inputs_name_arguments_and_shapes():
  v = np.zeros((2, 5), np.float32)
  with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*values shape \(2, 5\)"):
    W.td_errors(v, np.ones((2, 4)))
  with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*values shape \(2, 5\)"):
    W.gae_advantages(v, np.ones((2, 4)))
  with pytest.raises(ValueError, match=r"rewards shape \(3,\).*values shape \(2, 5\)"):
    W.lambda_returns(v, np.ones(3), np.ones((2, 5)))
  with pytest.raises(ValueError, match=r"policy_ce must have rank 3, got shape \(2, 5\)"):
    W.rho1_weights(v, v, v)
  with pytest.raises(ValueError, match=r"ref_ce shape \(2, 4\).*policy_ce shape \(2, 5, 3\)"):
    W.rho1_weights(np.zeros((2, 5, 3)), np.zeros((2, 4)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"mask shape \(2, 4\).*ref_ce shape \(2, 5\)"):
    W.rho1_continuous_weights(np.zeros((2, 5, 3)), v, np.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"mask shape \(2, 5, 1\).*advantages shape \(2, 5\)"):
    W.exp_weights(v, np.ones((2, 5, 1)))
  with pytest.raises(ValueError, match="unknown Rho-1 mode 'lowest'"):
    W.rho1_weights(np.zeros((2, 5, 3)), v, v, mode="lowest")
  with pytest.raises(ValueError, match="k_percent must be in"):
    W.rho1_weights(np.zeros((2, 5, 3)), v, v, k_percent=1.5)
  with pytest.raises(ValueError, match="both mean and std"):
    W.exp_weights(v, v, mean=0.0)
  with pytest.raises(ValueError, match=r"valid shape \(2, 5\).*w shape \(2, 5, 3\)"):
    W.selection_ratio_per_head(np.zeros((2, 5, 3)), v)


def test_bf16_inputs_give_float32_outputs():
  values, mask, rewards = make_case(18, 3, 8, False)
  v16, r16 = jnp.asarray(values, jnp.bfloat16), jnp.asarray(rewards, jnp.bfloat16)
  p16 = jnp.asarray(make_ce(18, 3, 8, 2, False)[0], jnp.bfloat16)
  valid = W.future_valid(mask, 2)
  outputs = [
      W.td_errors(v16, mask, rewards=r16), W.gae_advantages(v16, mask),
      W.lambda_returns(v16, r16, mask), W.exp_weights(v16, mask),
      W.exp_weights(v16, mask, mean=jnp.bfloat16(0.5), std=jnp.bfloat16(1.0)),
      W.rho1_weights(p16, v16, mask), W.rho1_continuous_weights(p16, v16, mask),
      W.softmax_head_weights(v16, mask, 2), W.normalize_weights(p16, valid),
      W.explained_variance(v16, v16, mask), W.selection_ratio_per_head(p16, valid),
      W.per_head_quantile(p16, valid, 0.5), *W.ema_update(W.ema_init(), v16, mask)[:2],
      *W.masked_moments(v16, mask)[:2], *W.weight_stats(p16, valid).values()]
  assert all(out.dtype == jnp.float32 for out in outputs), [out.dtype for out in outputs]


def test_under_outer_jit_with_batch_one():
  values, mask, rewards = make_case(19, 1, 9, False)
  mask[0, 3:7] = True

  @jax.jit
  def step(values, mask, rewards, state):
    adv = W.gae_advantages(values, mask, rewards=rewards)
    w = W.exp_weights(adv, mask, mean=state.mean, std=state.std)
    return adv, w, W.ema_update(state, adv, mask)

  adv, w, state = step(values, mask, rewards, W.ema_init())
  want_adv = gae_ref(values, mask, 1.0, 0.95, 0.5, rewards)
  np.testing.assert_allclose(adv, want_adv, **COMPOSITE)
  np.testing.assert_allclose(w, exp_weights_ref(want_adv, mask, 1.0, 0.1, 3.0, 0.0, 1.0),
                             **COMPOSITE)
  assert int(state.count) == 1
