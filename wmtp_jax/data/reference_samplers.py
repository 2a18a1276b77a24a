"""The samplers of the original PyTorch code (wooshikwon/weighted_mtp, ``data/datasets.py``:
``_sample_unique_pairs``, ``_sample_length_balanced_pairs``), the defaults of the ``7b`` configs.

Registered in ``wmtp_jax.data.samplers.METHODS`` (same calling convention: a ``problem_index_map``
and an integer ``seed``; problems visited in sorted id order, so every host computes the same
array). numpy's generator replaces Python's ``random``, so the draws differ from the reference's
while the rules are the same:

  ``unique_pairs``           ``[N, 2]`` (correct, incorrect) pairs, strictly 1:1 per problem
  ``unique_correct``         ``[N]`` their correct side: the policy pipelines' training set
  ``length_balanced_pairs``  ``[N, 2]`` pairs matched 1:1 within response-length bins (the critic)

Difficulty bins are ``(low, high, weight)`` (inclusive), as ``samplers.DifficultyBin``.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

ProblemIndexMap = Mapping[str, Mapping[str, Any]]

REFERENCE_DIFFICULTY = ((1, 25, 1.0),)  # difficulty 0 (unknown) and missing are left out
# Response-length bin edges of the reference critic: bin i is [e_i, e_{i+1}), then [2000, ∞).
REFERENCE_LENGTH_BINS = (0, 50, 100, 125, 150, 175, 200, 250, 300, 350, 400, 500, 600, 800, 1000,
                         1500, 2000)
RESPONSE_LENGTHS = {"correct": "correct_response_lengths",
                    "incorrect": "incorrect_response_lengths"}


def _difficulty_bin(level, bins: Sequence[Sequence[float]]) -> int | None:
  """Index of the first ``(low, high, weight)`` bin holding ``level`` (None: missing or in no
  bin)."""
  if level is None:
    return None
  return next((j for j, (low, high, _) in enumerate(bins) if low <= level <= high), None)


def _both_kinds(entry: Mapping[str, Any]) -> bool:
  return bool(len(entry["correct_indices"]) and len(entry["incorrect_indices"]))


def _take(pairs_Nx2: np.ndarray, n_samples: int | None, rng: np.random.Generator,
          what: str) -> np.ndarray:
  """``pairs_Nx2`` shuffled, then its first ``n_samples`` (all for None; fewer is an error)."""
  pairs_Nx2 = pairs_Nx2[rng.permutation(len(pairs_Nx2))]
  if n_samples is not None and n_samples > len(pairs_Nx2):
    raise ValueError(f"n_samples={n_samples} but only {len(pairs_Nx2)} {what} exist: lower "
                     f"n_samples or raise max_pairs_per_problem")
  return pairs_Nx2[:n_samples]


def unique_pairs(problem_index_map: ProblemIndexMap, *, seed: int, n_samples: int | None = None,
                 max_pairs_per_problem: int | None = None,
                 difficulty_bins: Sequence[Sequence[float]] = REFERENCE_DIFFICULTY) -> np.ndarray:
  """``[N, 2]`` (correct, incorrect) pairs, strictly 1:1: the reference's unique pairs.

  Only problems with both correct and incorrect solutions and a difficulty in one of the
  ``difficulty_bins`` (``(low, high, weight)``, inclusive; first match) take part. Per problem
  (sorted ids) both lists are shuffled and zipped: ``min(#correct, #incorrect,
  max_pairs_per_problem)`` pairs, so every solution is used at most once. ``n_samples`` pairs are
  then split over the bins with positive weight and pairs (weights renormalised over them):
  ``⌊n · w⌋`` each, the remainder one by one to the bins with the most pairs; each bin's
  shuffled pairs give their share; the result is shuffled. Fewer pairs than ``n_samples`` is an
  error. ``n_samples=None`` takes every pair of the bins with positive weight.
  """
  bins = [tuple(b) for b in difficulty_bins]
  rng = np.random.default_rng(seed)
  per_bin = [[np.zeros((0, 2), np.int64)] for _ in bins]
  for pid in sorted(problem_index_map):
    entry = problem_index_map[pid]
    j = _difficulty_bin(entry.get("difficulty"), bins)
    if j is None or not _both_kinds(entry):
      continue
    pos = rng.permutation(np.asarray(entry["correct_indices"], dtype=np.int64))
    neg = rng.permutation(np.asarray(entry["incorrect_indices"], dtype=np.int64))
    k = min(len(pos), len(neg), max_pairs_per_problem or len(pos))
    per_bin[j].append(np.stack([pos[:k], neg[:k]], axis=1))
  pools = [np.concatenate(p) for p in per_bin]
  used = [j for j, b in enumerate(bins) if b[2] > 0 and len(pools[j])]
  if not used:
    raise ValueError(f"no problem with both correct and incorrect solutions in the difficulty "
                     f"bins {bins} (with weight > 0)")
  if n_samples is None:
    return _take(np.concatenate([pools[j] for j in used]), None, rng, "unique pairs")
  weights = np.asarray([bins[j][2] for j in used], dtype=np.float64)
  targets = (n_samples * (weights / weights.sum())).astype(np.int64)
  by_size = np.argsort([-len(pools[j]) for j in used], kind="stable")
  for r in range(n_samples - int(targets.sum())):
    targets[by_size[r % len(used)]] += 1
  chosen = [pools[j][rng.permutation(len(pools[j]))][:t] for j, t in zip(used, targets)]
  return _take(np.concatenate(chosen), n_samples, rng, "unique pairs in the bins' shares")


def unique_correct(problem_index_map: ProblemIndexMap, **kwargs) -> np.ndarray:
  """``[N]`` the correct side of ``unique_pairs(**kwargs)``: the reference's policy training set
  (the same for every method at the same seed)."""
  return unique_pairs(problem_index_map, **kwargs)[:, 0]


def length_balanced_pairs(problem_index_map: ProblemIndexMap, *, seed: int,
                          n_samples: int | None = None, max_pairs_per_problem: int | None = None,
                          length_bins: Sequence[int] = REFERENCE_LENGTH_BINS,
                          difficulty_bins: Sequence[Sequence[float]] | None = REFERENCE_DIFFICULTY
                          ) -> np.ndarray:
  """``[N, 2]`` (correct, incorrect) pairs matched 1:1 within response-length bins: the
  reference critic's pairs.

  Needs the ``RESPONSE_LENGTHS`` keys (``with_response_lengths``): the token count of the
  response alone, not prompt + response. Bin ``i`` is ``[e_i, e_{i+1})`` of the increasing
  ``length_bins`` (below ``e_1`` is bin 0), lengths ≥ the last edge one more bin. Only problems
  with both kinds and (unless ``difficulty_bins`` is None) a difficulty inside one of the bins
  take part (the bins only filter here). Per problem and common bin (ascending) both lists are
  shuffled and zipped (each solution used at most once); a problem with more than
  ``max_pairs_per_problem`` pairs keeps that many, drawn at random. All pairs are shuffled and
  the first ``n_samples`` taken (None: all; fewer is an error).
  """
  bins = None if difficulty_bins is None else [tuple(b) for b in difficulty_bins]
  edges = np.asarray(length_bins)[1:]
  rng = np.random.default_rng(seed)
  chosen = [np.zeros((0, 2), np.int64)]
  for pid in sorted(problem_index_map):
    entry = problem_index_map[pid]
    if not _both_kinds(entry) or (
        bins is not None and _difficulty_bin(entry.get("difficulty"), bins) is None):
      continue
    missing = [key for key in RESPONSE_LENGTHS.values() if key not in entry]
    if missing:
      raise ValueError(f"problem {pid!r} has no {missing}: response lengths are measured by "
                       f"with_response_lengths (wmtp_jax.data.run_data does it)")
    sides = {}
    for kind, key in RESPONSE_LENGTHS.items():
      indices = np.asarray(entry[f"{kind}_indices"], dtype=np.int64)
      sides[kind] = (indices, np.searchsorted(edges, entry[key], side="right"))
    pairs = []
    for b in np.intersect1d(sides["correct"][1], sides["incorrect"][1]):
      pos, neg = (rng.permutation(idx[in_bin == b]) for idx, in_bin in sides.values())
      k = min(len(pos), len(neg))
      pairs.append(np.stack([pos[:k], neg[:k]], axis=1))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    if max_pairs_per_problem and len(pairs) > max_pairs_per_problem:
      pairs = pairs[rng.permutation(len(pairs))[:max_pairs_per_problem]]
    chosen.append(pairs)
  return _take(np.concatenate(chosen), n_samples, rng, "length-balanced pairs")


def with_response_lengths(problem_index_map: ProblemIndexMap,
                          measure: Callable[[list[int]], Sequence[int]]) -> dict:
  """A copy of the map whose problems with both correct and incorrect solutions also carry the
  ``RESPONSE_LENGTHS`` lists; ``measure(line indices)`` returns their responses' token counts
  (called once per such problem and kind)."""
  out = {}
  for pid, entry in problem_index_map.items():
    out[pid] = entry = dict(entry)
    if _both_kinds(entry):
      for kind, key in RESPONSE_LENGTHS.items():
        entry[key] = [int(n) for n in measure(list(entry[f"{kind}_indices"]))]
  return out
