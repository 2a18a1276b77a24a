"""The unbiased pass@k estimator (Chen et al. 2021) and its aggregation over problems (DESIGN §6).

For a problem with ``n`` samples of which ``c`` pass, ``pass@k = 1 − C(n−c, k) / C(n, k)``,
computed as ``1 − Π_{i=n−c+1}^{n} (1 − k/i)`` (no huge binomials). The benchmark score is the mean
over problems, reported only for the ``k`` where every problem has ``n ≥ k``.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased estimate of the probability that at least one of ``k`` samples passes."""
  if not 0 <= c <= n:
    raise ValueError(f"need 0 ≤ c ≤ n, got n={n}, c={c}")
  if not 1 <= k <= n:
    raise ValueError(f"need 1 ≤ k ≤ n, got n={n}, k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def aggregate(counts: Sequence[tuple[int, int]], ks: Iterable[int] = DEFAULT_KS
              ) -> dict[str, float]:
  """``{"pass@k": mean over problems}`` for each ``k`` with ``k ≤ n`` for every ``(n, c)``.

  ``counts``: per problem ``(n samples, c correct)``. ``k`` values some problem cannot support
  are left out (never estimated from a subset of the problems).
  """
  if not counts:
    return {}
  min_n = min(n for n, _ in counts)
  return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
          for k in sorted(set(ks)) if 1 <= k <= min_n}


def summarize(task_ids: Sequence[str], samples: Sequence[Mapping[str, Any]], ks: Iterable[int],
              *, with_accuracy: bool = False) -> dict:
  """Per-problem counts and pass@k, and the summary, from scored samples (``task_id``,
  ``passed``). Every task must have at least one sample; ``with_accuracy`` adds the fraction of
  correct samples (GSM8K).

  Returns ``{"summary": {"pass@k"…, "n_problems", "n_samples", "n_passed_samples"},
  "per_problem": [{"task_id", "n", "c", "pass@k"…}], "samples": [...]}``.
  """
  ks = sorted(set(ks))
  by_task: dict[str, list[bool]] = {t: [] for t in task_ids}
  for s in samples:
    by_task[s["task_id"]].append(bool(s["passed"]))
  missing = [t for t, v in by_task.items() if not v]
  if missing:
    raise ValueError(f"{len(missing)} problems have no sample, e.g. {missing[:3]}")
  per_problem = []
  for task_id, passed in by_task.items():
    n, c = len(passed), sum(passed)
    per_problem.append({"task_id": task_id, "n": n, "c": c,
                        **{f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}})
  summary: dict[str, Any] = aggregate([(p["n"], p["c"]) for p in per_problem], ks)
  summary.update(n_problems=len(per_problem), n_samples=len(samples),
                 n_passed_samples=sum(bool(s["passed"]) for s in samples))
  if with_accuracy:
    summary["accuracy"] = summary["n_passed_samples"] / len(samples)
  return {"summary": summary, "per_problem": per_problem, "samples": list(samples)}
