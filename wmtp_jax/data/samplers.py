"""Samplers: choose the line indices of a training set from a ``problem_index_map``.

Every sampler is a pure function of ``problem_index_map`` (the ``meta.json`` dict, DESIGN §5:
``{problem_id: {difficulty, correct_indices, incorrect_indices, correct_token_lengths,
incorrect_token_lengths}}``) and an integer ``seed`` (a ``numpy.random.Generator`` is built from
it; a sequence of ints also works); problems are visited in sorted ``problem_id`` order, so every
host computes the identical array without communicating. Outputs are in random order:

  ``[N] int64`` line indices (``correct_only``, ``balanced``, ``difficulty``, ``curriculum``), or
  ``[N, 2] int64`` (correct, incorrect) line-index pairs (``pairs``).

Drawing ``k`` items from a pool of ``n``: without replacement when ``k ≤ n``; otherwise every item
``k // n`` times plus ``k % n`` distinct items (upsampling keeps the draw as even as possible).

Difficulty bins are inclusive ranges ``DifficultyBin(low, high, weight)``; a problem whose
difficulty is missing (``None``/absent) or lies outside every bin goes to the bin ``missing_bin``
(an index into ``bins``), or, by default (``missing_bin=None``), is left out of difficulty sampling.

``sample(problem_index_map, method, **kwargs)`` dispatches on the method name (``METHODS``), which
also names the reference's samplers (``unique_correct``, ``unique_pairs``,
``length_balanced_pairs``: ``wmtp_jax.data.reference_samplers``, the ``7b`` defaults).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from wmtp_jax.data import reference_samplers

ProblemIndexMap = Mapping[str, Mapping[str, Any]]


class DifficultyBin(NamedTuple):
  """Problems with ``low ≤ difficulty ≤ high``, drawn with relative ``weight``."""
  low: int
  high: int
  weight: float


def _draw(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """``k`` items of ``pool`` (see the module docstring), shuffled."""
  if k > 0 and len(pool) == 0:
    raise ValueError(f"cannot draw {k} items from an empty pool")
  repeats, rest = divmod(k, len(pool)) if len(pool) else (0, 0)
  drawn = np.concatenate([np.tile(pool, repeats), rng.choice(pool, size=rest, replace=False)])
  return rng.permutation(drawn).astype(np.int64)


def _indices(problem_index_map: ProblemIndexMap, key: str,
             problem_ids: Sequence[str] | None = None) -> np.ndarray:
  """Concatenated ``[N] int64`` ``key`` lists (e.g. ``correct_indices``) of ``problem_ids``."""
  ids = sorted(problem_index_map) if problem_ids is None else problem_ids
  return np.asarray([i for pid in ids for i in problem_index_map[pid][key]], dtype=np.int64)


def correct_only(problem_index_map: ProblemIndexMap, *, seed: int,
                 n_samples: int | None = None) -> np.ndarray:
  """``[N]`` correct solutions: all of them (``n_samples=None``) or ``n_samples`` drawn."""
  pool = _indices(problem_index_map, "correct_indices")
  return _draw(pool, len(pool) if n_samples is None else n_samples, np.random.default_rng(seed))


def balanced(problem_index_map: ProblemIndexMap, *, seed: int,
             n_samples: int | None = None) -> np.ndarray:
  """``[N]`` solutions, half correct and half incorrect (the odd one out is incorrect).

  ``n_samples=None`` takes ``2 · min(#correct, #incorrect)``.
  """
  correct = _indices(problem_index_map, "correct_indices")
  incorrect = _indices(problem_index_map, "incorrect_indices")
  if n_samples is None:
    n_samples = 2 * min(len(correct), len(incorrect))
  rng = np.random.default_rng(seed)
  drawn = np.concatenate([_draw(correct, n_samples // 2, rng),
                          _draw(incorrect, n_samples - n_samples // 2, rng)])
  return rng.permutation(drawn)


def bin_problems(problem_index_map: ProblemIndexMap, bins: Sequence[Sequence[float]],
                 missing_bin: int | None = None) -> list[list[str]]:
  """Sorted problem ids per bin (``bins`` are ``DifficultyBin``s or ``(low, high, weight)``).

  A difficulty inside several bins goes to the first one.
  """
  bins = [DifficultyBin(*b) for b in bins]
  members = [[] for _ in bins]
  for pid in sorted(problem_index_map):
    level = problem_index_map[pid].get("difficulty")
    inside = [] if level is None else [j for j, b in enumerate(bins) if b.low <= level <= b.high]
    if inside:
      members[inside[0]].append(pid)
    elif missing_bin is not None:
      members[missing_bin].append(pid)
  return members


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
  """Integer counts summing to ``total`` proportional to ``weights`` (Hamilton's method)."""
  exact = total * weights / weights.sum()
  counts = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:total - counts.sum()]] += 1
  return counts


def difficulty(problem_index_map: ProblemIndexMap, *, seed: int, n_samples: int,
               bins: Sequence[Sequence[float]], missing_bin: int | None = None,
               include_incorrect: bool = False) -> np.ndarray:
  """``[n_samples]`` solutions with per-bin counts proportional to the bin weights.

  Draws correct solutions (also incorrect ones with ``include_incorrect``) of each bin's
  problems. A bin with positive weight but no solutions is an error.
  """
  weights = np.asarray([DifficultyBin(*b).weight for b in bins], dtype=np.float64)
  if (weights < 0).any() or weights.sum() <= 0:
    raise ValueError(f"bin weights must be ≥ 0 with a positive sum, got {weights.tolist()}")
  counts = _largest_remainder(weights, n_samples)
  rng = np.random.default_rng(seed)
  parts = []
  for j, (members, count) in enumerate(zip(bin_problems(problem_index_map, bins, missing_bin),
                                           counts)):
    pool = _indices(problem_index_map, "correct_indices", members)
    if include_incorrect:
      pool = np.concatenate([pool, _indices(problem_index_map, "incorrect_indices", members)])
    if count and not len(pool):
      raise ValueError(f"difficulty bin {j} {DifficultyBin(*bins[j])} has weight > 0 and no "
                       "solutions")
    parts.append(_draw(pool, int(count), rng))
  return rng.permutation(np.concatenate(parts))


def curriculum_weights(schedule: Sequence[tuple[float, Sequence[float]]],
                       progress: float) -> np.ndarray:
  """Bin weights at training ``progress`` in [0, 1].

  ``schedule`` is a list of ``(progress, weights)`` keypoints sorted by progress; the weights are
  interpolated linearly between keypoints and held constant before the first and after the last.
  """
  points = np.asarray([p for p, _ in schedule], dtype=np.float64)
  table = np.asarray([w for _, w in schedule], dtype=np.float64)  # [K, n_bins]
  if np.any(np.diff(points) <= 0):
    raise ValueError(f"curriculum keypoints must have increasing progress, got {points.tolist()}")
  return np.asarray([np.interp(progress, points, table[:, j]) for j in range(table.shape[1])])


def sample_for_progress(problem_index_map: ProblemIndexMap, *, seed: int, n_samples: int,
                        bins: Sequence[Sequence[float]],
                        schedule: Sequence[tuple[float, Sequence[float]]], progress: float,
                        missing_bin: int | None = None,
                        include_incorrect: bool = False) -> np.ndarray:
  """``difficulty`` sampling with the bin weights of ``schedule`` at ``progress``.

  The ``weight`` of each entry of ``bins`` is ignored (the schedule gives the weights).
  """
  weights = curriculum_weights(schedule, progress)
  if len(weights) != len(bins):
    raise ValueError(f"schedule has {len(weights)} weights per keypoint, {len(bins)} bins given")
  bins = [(b[0], b[1], w) for b, w in zip(bins, weights)]
  return difficulty(problem_index_map, seed=seed, n_samples=n_samples, bins=bins,
                    missing_bin=missing_bin, include_incorrect=include_incorrect)


def curriculum(problem_index_map: ProblemIndexMap, *, seed: int, n_samples: int,
               bins: Sequence[Sequence[float]],
               schedule: Sequence[tuple[float, Sequence[float]]], n_stages: int,
               missing_bin: int | None = None, include_incorrect: bool = False) -> np.ndarray:
  """``[n_samples]`` solutions in curriculum order: ``n_stages`` consecutive equal segments.

  Segment s is ``sample_for_progress`` at the middle of its span, ``(s + 0.5) / n_stages``, with
  seed ``(seed, s)``. Feed it to the pipeline with ``shuffle=False`` to keep the stage order.
  """
  sizes = _largest_remainder(np.ones(n_stages), n_samples)
  return np.concatenate([
      sample_for_progress(problem_index_map, seed=[seed, s], n_samples=int(size), bins=bins,
                          schedule=schedule, progress=(s + 0.5) / n_stages,
                          missing_bin=missing_bin, include_incorrect=include_incorrect)
      for s, size in enumerate(sizes)])


def pairs(problem_index_map: ProblemIndexMap, *, seed: int, max_pairs_per_problem: int,
          length_bins: Sequence[int] | None = None,
          n_samples: int | None = None) -> np.ndarray:
  """``[N, 2]`` unique (correct, incorrect) line-index pairs of the same problem.

  Per problem, up to ``max_pairs_per_problem`` distinct pairs are drawn without replacement
  from all its (correct, incorrect) combinations (a solution may be in several). With
  ``length_bins`` (increasing edges, e.g. ``[0, 100, 150, 200, 300, 500, 1000, 2000]``) a correct
  and an incorrect solution are combined only when their token lengths (the index's: prompt +
  response; ``length_balanced_pairs`` bins response lengths) fall in the same bin
  ``[e_i, e_{i+1})`` (lengths ≥ the last edge form one more bin), which removes length as a cue.
  ``n_samples`` then draws that many of the pairs (none repeated; an error if fewer exist).
  """
  edges = np.asarray([0] if length_bins is None else length_bins)
  rng = np.random.default_rng(seed)
  chosen = []
  for pid in sorted(problem_index_map):
    entry = problem_index_map[pid]
    pos = np.asarray(entry["correct_indices"], dtype=np.int64)
    neg = np.asarray(entry["incorrect_indices"], dtype=np.int64)
    pos_bin = np.digitize(np.asarray(entry["correct_token_lengths"]), edges)
    neg_bin = np.digitize(np.asarray(entry["incorrect_token_lengths"]), edges)
    # Pairs of bin b are numbered b-major: offsets[b] + i · n_neg[b] + j.
    groups = [(pos[pos_bin == b], neg[neg_bin == b]) for b in np.unique(pos_bin)]
    sizes = np.asarray([len(p) * len(n) for p, n in groups], dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
      continue
    flat = rng.choice(total, size=min(max_pairs_per_problem, total), replace=False)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    group = np.searchsorted(offsets, flat, side="right") - 1
    for g, f in zip(group, flat):
      p, n = groups[g]
      i, j = divmod(int(f - offsets[g]), len(n))
      chosen.append((p[i], n[j]))
  out = np.asarray(chosen, dtype=np.int64).reshape(-1, 2)
  if n_samples is not None:
    if n_samples > len(out):
      raise ValueError(f"n_samples={n_samples} but only {len(out)} unique pairs exist")
    return out[rng.choice(len(out), size=n_samples, replace=False)]
  return out[rng.permutation(len(out))]


def method_args(method: str, sampler_args: Mapping[str, Any],
                reference_sampler_args: Mapping[str, Any]) -> dict:
  """The keyword arguments of ``method`` from a run config's ``data.sampler_args`` (today's
  samplers) or ``data.reference_sampler_args`` (the ``REFERENCE_METHODS``: ``n_samples`` and
  ``max_pairs_per_problem`` 0 mean none; ``length_bins`` only for ``length_balanced_pairs``)."""
  if method not in REFERENCE_METHODS:
    return dict(sampler_args)
  r = reference_sampler_args
  args = dict(n_samples=r["n_samples"] or None,
              max_pairs_per_problem=r["max_pairs_per_problem"] or None,
              difficulty_bins=tuple(tuple(b) for b in r["difficulty_bins"]))
  if method == "length_balanced_pairs":
    args["length_bins"] = tuple(r["length_bins"])
  return args


def validation_args(method: str, args: Mapping[str, Any]) -> dict:
  """The sampler arguments for the validation split: the reference samplers take all their
  pairs there (``n_samples`` is the training set's size; the validation reads its batches from
  the shuffled whole), the others ``args`` unchanged."""
  return {**args, "n_samples": None} if method in REFERENCE_METHODS else dict(args)


def split_problems(problem_index_map: ProblemIndexMap, *, seed: int,
                   valid_fraction: float) -> tuple[dict, dict]:
  """Holds out problems for validation: ``(train_map, valid_map)`` with disjoint problem ids.

  ``round(valid_fraction · #problems)`` problems (at least one when ``valid_fraction > 0``) go to
  ``valid_map``; any sampler can then run on either map.
  """
  if not 0 <= valid_fraction < 1:
    raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
  ids = sorted(problem_index_map)
  n_valid = max(int(round(valid_fraction * len(ids))), int(valid_fraction > 0))
  valid = set(np.random.default_rng(seed).choice(len(ids), size=n_valid, replace=False).tolist())
  train_map, valid_map = {}, {}
  for k, pid in enumerate(ids):
    (valid_map if k in valid else train_map)[pid] = problem_index_map[pid]
  return train_map, valid_map


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "correct_only": correct_only,
    "balanced": balanced,
    "difficulty": difficulty,
    "curriculum": curriculum,
    "pairs": pairs,
    "unique_correct": reference_samplers.unique_correct,
    "unique_pairs": reference_samplers.unique_pairs,
    "length_balanced_pairs": reference_samplers.length_balanced_pairs,
}
REFERENCE_METHODS = ("unique_correct", "unique_pairs", "length_balanced_pairs")
PAIR_METHODS = ("pairs", "unique_pairs", "length_balanced_pairs")  # [N, 2] outputs
# Methods that read response lengths: run ``reference_samplers.with_response_lengths`` first.
NEEDS_RESPONSE_LENGTHS = ("length_balanced_pairs",)


def sample(problem_index_map: ProblemIndexMap, method: str, **kwargs) -> np.ndarray:
  """Runs the sampler ``METHODS[method]`` with ``kwargs`` (e.g. ``**config.sampler``)."""
  if method not in METHODS:
    raise ValueError(f"unknown sampling method {method!r}; choose one of {sorted(METHODS)}")
  return METHODS[method](problem_index_map, **kwargs)
