"""Tests of wmtp_jax.data.samplers on a synthetic indexed record file."""

import collections

import numpy as np
import pytest

from wmtp_jax.data import jsonl, records, samplers

BINS = [(1, 8, 0.2), (9, 15, 0.5), (16, 25, 0.3)]


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
  """60 problems (difficulty 1..25, every 10th missing), 0..7 correct and incorrect each."""
  rng = np.random.default_rng(0)
  rows = []
  for p in range(60):
    for k in range(int(rng.integers(0, 8)) + int(rng.integers(0, 8))):
      row = {"instruction": f"task {p}", "input": "", "problem_id": f"p{p:02d}",
             "output": "x" * int(rng.integers(1, 400)), "is_correct": bool(rng.integers(0, 2))}
      if p % 10:
        row["difficulty"] = 1 + p % 25
      rows.append(row)
  path = tmp_path_factory.mktemp("samplers") / "train.jsonl"
  jsonl.write_jsonl(path, rows)
  return records.build_index(path, None)


@pytest.fixture(scope="module")
def pim(meta):
  return meta["problem_index_map"]


def _owner(pim):
  """line index → (problem_id, is_correct, length)."""
  owner = {}
  for pid, e in pim.items():
    for kind, flag in (("correct", True), ("incorrect", False)):
      for i, n in zip(e[f"{kind}_indices"], e[f"{kind}_token_lengths"]):
        owner[i] = (pid, flag, n)
  return owner


def _n_combinations(pim):
  """Number of (correct, incorrect) combinations of every problem."""
  return sum(len(e["correct_indices"]) * len(e["incorrect_indices"]) for e in pim.values())


CASES = {
    "correct_only": dict(n_samples=50),
    "balanced": dict(n_samples=60),
    "difficulty": dict(n_samples=200, bins=BINS),
    "curriculum": dict(n_samples=200, bins=BINS, n_stages=3,
                       schedule=[(0.0, [1.0, 0.0, 0.0]), (1.0, [0.0, 0.0, 1.0])]),
    "pairs": dict(max_pairs_per_problem=4),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_deterministic_from_seed(pim, method):
  a = samplers.sample(pim, method, seed=1, **CASES[method])
  b = samplers.sample(dict(reversed(list(pim.items()))), method, seed=1, **CASES[method])
  c = samplers.sample(pim, method, seed=2, **CASES[method])
  np.testing.assert_array_equal(a, b)  # independent of the map's key order (every host agrees)
  assert not np.array_equal(a, c)
  assert a.dtype == np.int64


def test_unknown_method_lists_choices(pim):
  with pytest.raises(ValueError, match="choose one of .*balanced.*correct_only"):
    samplers.sample(pim, "corect_only", seed=0)


def test_correct_only(pim):
  owner = _owner(pim)
  every = samplers.correct_only(pim, seed=0)
  assert sorted(every.tolist()) == sorted(i for i, (_, ok, _) in owner.items() if ok)
  subset = samplers.correct_only(pim, seed=0, n_samples=30)
  assert len(set(subset.tolist())) == 30 and all(owner[i][1] for i in subset)
  upsampled = samplers.correct_only(pim, seed=0, n_samples=2 * len(every) + 5)
  counts = collections.Counter(upsampled.tolist())
  assert set(counts) == set(every.tolist()) and set(counts.values()) <= {2, 3}


def test_balanced(pim):
  owner = _owner(pim)
  drawn = samplers.balanced(pim, seed=0, n_samples=101)
  assert len(set(drawn.tolist())) == 101
  assert sum(owner[i][1] for i in drawn) == 50
  n_min = min(sum(ok for _, ok, _ in owner.values()), sum(not ok for _, ok, _ in owner.values()))
  assert len(samplers.balanced(pim, seed=0)) == 2 * n_min


def _bin_counts(pim, drawn, bins):
  level = {pid: e["difficulty"] for pid, e in pim.items()}
  owner = _owner(pim)
  counts = np.zeros(len(bins) + 1, dtype=int)  # last: missing difficulty
  for i in drawn:
    d = level[owner[i][0]]
    counts[next((j for j, (lo, hi, _) in enumerate(bins) if d is not None and lo <= d <= hi),
                len(bins))] += 1
  return counts


def test_difficulty_bin_proportions(pim):
  drawn = samplers.difficulty(pim, seed=0, n_samples=1000, bins=BINS)
  # Largest-remainder counts: exactly the weights at this size; only correct solutions.
  np.testing.assert_array_equal(_bin_counts(pim, drawn, BINS), [200, 500, 300, 0])
  owner = _owner(pim)
  assert all(owner[i][1] for i in drawn)
  with_wrong = samplers.difficulty(pim, seed=0, n_samples=999, bins=BINS, include_incorrect=True)
  np.testing.assert_array_equal(_bin_counts(pim, with_wrong, BINS), [200, 499, 300, 0])
  assert not all(owner[i][1] for i in with_wrong)


def test_missing_difficulty_goes_to_missing_bin(pim):
  members = samplers.bin_problems(pim, BINS, missing_bin=1)
  missing = sorted(pid for pid, e in pim.items() if e["difficulty"] is None)
  assert set(missing) <= set(members[1])
  assert not set(missing) & set().union(*samplers.bin_problems(pim, BINS))
  assert sorted(sum(members, [])) == sorted(pim)
  drawn = samplers.difficulty(pim, seed=0, n_samples=1000, bins=BINS, missing_bin=1)
  counts = _bin_counts(pim, drawn, BINS)
  assert counts[0] == 200 and counts[2] == 300 and counts[1] + counts[3] == 500 and counts[3] > 0


def test_empty_bin_with_weight_is_an_error(pim):
  with pytest.raises(ValueError, match="no solutions"):
    samplers.difficulty(pim, seed=0, n_samples=10, bins=[(1, 25, 1.0), (90, 99, 0.1)])


def test_curriculum_interpolation(pim):
  schedule = [(0.0, [0.6, 0.4, 0.0]), (0.5, [0.2, 0.5, 0.3]), (1.0, [0.0, 0.2, 0.8])]
  np.testing.assert_allclose(samplers.curriculum_weights(schedule, 0.25), [0.4, 0.45, 0.15])
  np.testing.assert_allclose(samplers.curriculum_weights(schedule, 1.5), [0.0, 0.2, 0.8])
  drawn = samplers.sample_for_progress(pim, seed=0, n_samples=400, bins=BINS,
                                       schedule=schedule, progress=0.75)
  np.testing.assert_array_equal(_bin_counts(pim, drawn, BINS), [40, 140, 220, 0])
  with pytest.raises(ValueError, match="increasing"):
    samplers.curriculum_weights([(0.5, [1.0]), (0.5, [0.0])], 0.5)


def test_curriculum_stages_in_order(pim):
  drawn = samplers.curriculum(pim, **CASES["curriculum"], seed=0)
  stages = [_bin_counts(pim, part, BINS) for part in np.split(drawn, [67, 134])]
  # Stage progress 1/6, 1/2, 5/6: easy → hard.
  np.testing.assert_array_equal(stages[0], [56, 0, 11, 0])
  np.testing.assert_array_equal(stages[1], [34, 0, 33, 0])
  np.testing.assert_array_equal(stages[2], [11, 0, 55, 0])


def test_pairs_unique_and_capped(pim):
  owner = _owner(pim)
  drawn = samplers.pairs(pim, seed=0, max_pairs_per_problem=5)
  assert drawn.shape[1] == 2
  assert len({tuple(p) for p in drawn.tolist()}) == len(drawn)
  per_problem = collections.Counter(owner[pos][0] for pos, _ in drawn)
  expected = {pid: min(5, len(e["correct_indices"]) * len(e["incorrect_indices"]))
              for pid, e in pim.items()}
  assert per_problem == collections.Counter({k: v for k, v in expected.items() if v})
  for pos, neg in drawn:
    assert owner[pos][1] and not owner[neg][1] and owner[pos][0] == owner[neg][0]
  # Uncapped: every combination exactly once.
  every = samplers.pairs(pim, seed=0, max_pairs_per_problem=10**6)
  assert len({tuple(p) for p in every.tolist()}) == len(every) == _n_combinations(pim)
  subset = samplers.pairs(pim, seed=0, max_pairs_per_problem=5, n_samples=20)
  assert len(subset) == 20
  assert {tuple(p) for p in subset.tolist()} <= {tuple(p) for p in drawn.tolist()}
  with pytest.raises(ValueError, match="unique pairs"):
    samplers.pairs(pim, seed=0, max_pairs_per_problem=1, n_samples=10**6)


def test_length_balanced_pairs(pim):
  owner = _owner(pim)
  edges = [0, 100, 150, 200, 300]
  drawn = samplers.pairs(pim, seed=0, max_pairs_per_problem=10**6, length_bins=edges)
  assert len({tuple(p) for p in drawn.tolist()}) == len(drawn) > 0
  for pos, neg in drawn:
    assert np.digitize(owner[pos][2], edges) == np.digitize(owner[neg][2], edges)
  n_same_bin = sum(
      np.digitize(a, edges) == np.digitize(b, edges)
      for e in pim.values() for a in e["correct_token_lengths"]
      for b in e["incorrect_token_lengths"])
  assert len(drawn) == n_same_bin < _n_combinations(pim)


def test_validation_split_disjoint(pim):
  train, valid = samplers.split_problems(pim, seed=0, valid_fraction=0.2)
  assert len(valid) == 12 and not set(train) & set(valid) and set(train) | set(valid) == set(pim)
  train_rows = set(samplers.balanced(train, seed=0).tolist())
  valid_rows = set(samplers.balanced(valid, seed=0).tolist())
  assert train_rows and valid_rows and not train_rows & valid_rows
  again, _ = samplers.split_problems(pim, seed=0, valid_fraction=0.2)
  other, _ = samplers.split_problems(pim, seed=1, valid_fraction=0.2)
  assert set(again) == set(train) and set(other) != set(train)
