"""The reference's samplers (``wmtp_jax.data.reference_samplers``) against loops written here, on a
fixture index: unique 1:1 pairs, the per-problem cap, the difficulty filter and bin shares, and
response-length bins (the reference's 17 edges, lengths right at the edges)."""

import collections

import numpy as np
import pytest

from wmtp_jax.config import common
from wmtp_jax.data import reference_samplers, samplers

EDGES = reference_samplers.REFERENCE_LENGTH_BINS
BINS = ((1, 8, 0.2), (9, 15, 0.5), (16, 25, 0.3), (30, 40, 0.4))  # the last bin has no problem


@pytest.fixture(scope="module")
def pim():
  """80 problems: difficulty missing, 0, 1..25 or 26; 0..9 correct and incorrect solutions each;
  response lengths at, just below and just above the reference's edges; token lengths (the
  index's) = a per-problem prompt length + response + 1."""
  rng = np.random.default_rng(0)
  levels = [None, 0, 26, *range(1, 26)]
  candidates = sorted({max(e + d, 0) for e in EDGES for d in (-1, 0, 1)} | {5000})
  out, line = {}, 0
  for p in range(80):
    entry = {"difficulty": levels[int(rng.integers(len(levels)))]}
    prompt = int(rng.integers(20, 300))
    for kind in ("correct", "incorrect"):
      n = int(rng.integers(0, 10))
      entry[f"{kind}_indices"] = list(range(line, line + n))
      line += n
      response = [int(x) for x in rng.choice(candidates[:int(rng.integers(6, 40))], size=n)]
      entry[f"{kind}_response_lengths"] = response
      entry[f"{kind}_token_lengths"] = [prompt + r + 1 for r in response]
    out[f"p{p:02d}"] = entry
  return out


def _owner(pim):
  """line index → (problem_id, is_correct, response length)."""
  return {i: (pid, kind == "correct", n) for pid, e in pim.items()
          for kind in ("correct", "incorrect")
          for i, n in zip(e[f"{kind}_indices"], e[f"{kind}_response_lengths"])}


def _in_bins(level, bins):
  for j, (low, high, _) in enumerate(bins):
    if level is not None and low <= level <= high:
      return j
  return None


def _eligible(entry, bins=reference_samplers.REFERENCE_DIFFICULTY):
  return (len(entry["correct_indices"]) > 0 and len(entry["incorrect_indices"]) > 0
          and _in_bins(entry["difficulty"], bins) is not None)


def _label(length):
  """The reference's ``get_bin_label``."""
  for i, b in enumerate(EDGES[1:]):
    if length < b:
      return f"{EDGES[i]}-{b}"
  return f"{EDGES[-1]}+"


def _check_unique_and_matched(pairs_Nx2, pim):
  owner = _owner(pim)
  flat = pairs_Nx2.ravel().tolist()
  assert len(flat) == len(set(flat))  # every solution at most once, on either side
  for c, i in pairs_Nx2.tolist():
    assert owner[c][0] == owner[i][0] and owner[c][1] and not owner[i][1]


def test_unique_pairs_every_pair_of_every_eligible_problem(pim):
  for cap in (None, 3):
    got = reference_samplers.unique_pairs(pim, seed=1, max_pairs_per_problem=cap)
    _check_unique_and_matched(got, pim)
    want = collections.Counter()
    for pid, e in pim.items():
      if _eligible(e):
        want[pid] = min(len(e["correct_indices"]), len(e["incorrect_indices"]), cap or 99)
    owner = _owner(pim)
    assert collections.Counter(owner[c][0] for c in got[:, 0]) == want
  assert any(e["difficulty"] in (None, 0, 26) and len(e["correct_indices"])
             and len(e["incorrect_indices"]) for e in pim.values())  # the filter has work


def test_unique_pairs_bin_shares_and_shortage(pim):
  n = 61
  got = reference_samplers.unique_pairs(pim, seed=2, n_samples=n, max_pairs_per_problem=2,
                                        difficulty_bins=BINS)
  assert got.shape == (n, 2)
  _check_unique_and_matched(got, pim)
  # The reference's allocation, as a loop: bins with weight and pairs, renormalised weights,
  # floor shares, the remainder one by one to the bins with the most pairs.
  available = collections.Counter()
  for e in pim.values():
    if _eligible(e, BINS):
      available[_in_bins(e["difficulty"], BINS)] += min(len(e["correct_indices"]),
                                                          len(e["incorrect_indices"]), 2)
  valid = [j for j, b in enumerate(BINS) if b[2] > 0 and available[j] > 0]
  total = sum(BINS[j][2] for j in valid)
  target = {j: int(n * BINS[j][2] / total) for j in valid}
  by_size = sorted(valid, key=lambda j: available[j], reverse=True)
  for r in range(n - sum(target.values())):
    target[by_size[r % len(by_size)]] += 1
  owner = _owner(pim)
  assert collections.Counter(_in_bins(pim[owner[c][0]]["difficulty"], BINS)
                             for c in got[:, 0]) == target
  everything = len(reference_samplers.unique_pairs(pim, seed=2, max_pairs_per_problem=2,
                                                   difficulty_bins=BINS))
  with pytest.raises(ValueError, match=rf"n_samples={everything + 1} but only"):
    reference_samplers.unique_pairs(pim, seed=2, n_samples=everything + 1,
                                    max_pairs_per_problem=2, difficulty_bins=BINS)


def test_unique_correct_is_the_correct_side_and_deterministic(pim):
  kwargs = dict(seed=3, n_samples=40, max_pairs_per_problem=60)
  pairs = reference_samplers.unique_pairs(pim, **kwargs)
  np.testing.assert_array_equal(samplers.sample(pim, "unique_correct", **kwargs), pairs[:, 0])
  np.testing.assert_array_equal(reference_samplers.unique_correct(pim, **kwargs), pairs[:, 0])
  assert not np.array_equal(reference_samplers.unique_correct(pim, **{**kwargs, "seed": 4}),
                            pairs[:, 0])


def test_length_balanced_pairs_match_response_length_bins(pim):
  for cap in (None, 2):
    got = samplers.sample(pim, "length_balanced_pairs", seed=5, max_pairs_per_problem=cap)
    _check_unique_and_matched(got, pim)
    owner = _owner(pim)
    assert all(_label(owner[c][2]) == _label(owner[i][2]) for c, i in got.tolist())
    want = collections.Counter()
    for pid, e in pim.items():
      if _eligible(e):
        count = 0
        for label in {_label(n) for n in e["correct_response_lengths"]}:
          count += min(sum(_label(n) == label for n in e["correct_response_lengths"]),
                       sum(_label(n) == label for n in e["incorrect_response_lengths"]))
        if count:
          want[pid] = min(count, cap or count)
    assert collections.Counter(owner[c][0] for c in got[:, 0]) == want
  # The fixture tells response from prompt + response bins apart: the pairs by the index's
  # lengths would differ (and some pairs straddle a token-length bin).
  owner_total = {i: n for e in pim.values() for kind in ("correct", "incorrect")
                 for i, n in zip(e[f"{kind}_indices"], e[f"{kind}_token_lengths"])}
  assert any(_label(owner_total[c]) != _label(owner_total[i]) for c, i in got.tolist())


def test_length_balanced_n_samples_filter_and_missing_lengths(pim):
  got = reference_samplers.length_balanced_pairs(pim, seed=6, n_samples=20,
                                                 max_pairs_per_problem=50)
  everything = reference_samplers.length_balanced_pairs(pim, seed=6, max_pairs_per_problem=50)
  assert got.shape == (20, 2) and set(map(tuple, got.tolist())) <= set(
      map(tuple, everything.tolist()))
  unfiltered = reference_samplers.length_balanced_pairs(pim, seed=6, difficulty_bins=None)
  assert len(unfiltered) > len(everything)
  with pytest.raises(ValueError, match="only .* length-balanced pairs exist"):
    reference_samplers.length_balanced_pairs(pim, seed=6, n_samples=len(everything) + 1)
  bare = {pid: {k: v for k, v in e.items() if "response" not in k} for pid, e in pim.items()}
  with pytest.raises(ValueError, match="correct_response_lengths"):
    reference_samplers.length_balanced_pairs(bare, seed=0)


def test_with_response_lengths_measures_only_pairable_problems(pim):
  bare = {pid: {k: v for k, v in e.items() if "response" not in k} for pid, e in pim.items()}
  owner = _owner(pim)
  asked = []

  def measure(ids):
    asked.extend(ids)
    return [owner[i][2] for i in ids]

  out = reference_samplers.with_response_lengths(bare, measure)
  pairable = [pid for pid, e in bare.items()
              if len(e["correct_indices"]) and len(e["incorrect_indices"])]
  assert sorted(asked) == sorted(i for pid in pairable for kind in ("correct", "incorrect")
                                 for i in bare[pid][f"{kind}_indices"])
  for pid, e in out.items():
    keys = set(reference_samplers.RESPONSE_LENGTHS.values())
    if pid in pairable:
      assert all(e[k] == pim[pid][k] for k in keys)
    else:
      assert not keys & set(e)
  assert "correct_response_lengths" not in bare["p00"]  # the input is not changed


def test_method_args_validation_args_and_method_lists():
  reference = common.reference_sampler_args(n_samples=7, max_pairs_per_problem=0)
  today = {"max_pairs_per_problem": 4, "length_bins": (0, 100)}
  assert samplers.method_args("pairs", today, reference) == today
  assert samplers.method_args("unique_correct", today, reference) == dict(
      n_samples=7, max_pairs_per_problem=None, difficulty_bins=((1, 25, 1.0),))
  assert samplers.method_args("length_balanced_pairs", today, common.reference_sampler_args()) == (
      dict(n_samples=None, max_pairs_per_problem=60, difficulty_bins=((1, 25, 1.0),),
           length_bins=EDGES))
  args = {"n_samples": 200000, "max_pairs_per_problem": 60}
  assert samplers.validation_args("unique_correct", args) == {**args, "n_samples": None}
  assert samplers.validation_args("balanced", {"n_samples": 8}) == {"n_samples": 8}
  assert set(samplers.REFERENCE_METHODS) <= set(samplers.METHODS)
  assert set(samplers.PAIR_METHODS) <= set(samplers.METHODS)


def test_7b_policies_share_one_sample_set_and_the_critic_bins_responses():
  """Every 7b policy pipeline draws the same set (sampler, arguments and seed equal); the 7b
  critic uses the length-balanced pairs with the reference's edges; today's samplers stay the
  tiny defaults and one flag away on 7b (their own ``sampler_args``)."""
  configs = [common.load(name, "7b") for name in ("baseline", "verifiable", "rho1")]
  data = [(c.data.sampler, samplers.method_args(c.data.sampler, c.data.sampler_args,
                                                c.data.reference_sampler_args), c.data.seed)
          for c in configs]
  assert data[0][0] == "unique_correct" and data.count(data[0]) == 3
  assert data[0][1] == dict(n_samples=200000, max_pairs_per_problem=60,
                            difficulty_bins=((1, 25, 1.0),))
  critic = common.load("critic", "7b").data
  assert critic.sampler == "length_balanced_pairs" and len(EDGES) == 17
  assert samplers.method_args(critic.sampler, critic.sampler_args,
                              critic.reference_sampler_args)["length_bins"] == EDGES
  assert common.load("critic", "tiny").data.sampler == ""
  assert common.load("baseline", "7b").data.sampler_args.to_dict() == {}  # correct_only fits
