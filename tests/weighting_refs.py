"""Loop references and inputs shared by the tests of wmtp_jax.weighting (DESIGN.md §3).

Every reference below is a literal loop over rows, positions and heads, written from the formula
in DESIGN.md, not a vectorised re-derivation. Tolerances: 1e-5 for simple functions, 1e-4 for
composite ones (fp32).
"""

import math

import numpy as np

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


def make_ce(seed, b, s, n, ties):
  rng = np.random.default_rng(seed)
  if ties:
    policy = rng.integers(0, 4, (b, s, n)).astype(np.float32)
    ref = rng.integers(0, 3, (b, s)).astype(np.float32)
  else:
    policy = rng.gamma(2.0, 1.0, (b, s, n)).astype(np.float32)
    ref = rng.gamma(2.0, 1.0, (b, s)).astype(np.float32)
  return policy, ref, make_mask(rng, b, s, holes=True)


def last_valid(mask_row):
  valid = [t for t in range(len(mask_row)) if mask_row[t]]
  return valid[-1] if valid else None


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
