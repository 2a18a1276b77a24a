"""experiment.stats against loops written here (numpy only, no scipy)."""

import math

import numpy as np
import pytest

from wmtp_jax.experiment import stats


def test_mean_ci_is_the_student_t_interval():
  """Mean, sample standard deviation (n − 1) and t_{0.975, n−1} from the table, by hand; NaNs
  are left out; one value has no interval, none has no mean."""
  x = [0.5, 0.25, 1.0, np.nan, 0.75]
  kept = [v for v in x if not math.isnan(v)]
  n = len(kept)
  mean = sum(kept) / n
  sd = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1))
  got = stats.mean_ci(x)
  assert got[0] == pytest.approx(mean, rel=1e-12) and got[2] == 4
  assert got[1] == pytest.approx(3.182 * sd / math.sqrt(n), rel=1e-12)  # t(0.975, 3)
  assert stats.mean_ci([0.3])[:1] == (0.3,) and math.isnan(stats.mean_ci([0.3])[1])
  assert stats.mean_ci([])[2] == 0
  many = np.arange(40.0)
  assert stats.mean_ci(many)[1] == pytest.approx(1.96 * many.std(ddof=1) / math.sqrt(40))


def _loop_bootstrap(a, b, samples, seed):
  """The two-way bootstrap by its definition: each resample draws P problems and R seeds with
  replacement (the same counts ``paired_bootstrap`` draws) and averages a − b over every drawn
  (problem, seed) pair."""
  d = [[a[p][s] - b[p][s] for s in range(len(a[0]))] for p in range(len(a))]
  n_p, n_r = len(d), len(d[0])
  rng = np.random.default_rng(seed)
  problem_counts = rng.multinomial(n_p, [1.0 / n_p] * n_p, size=samples)
  seed_counts = rng.multinomial(n_r, [1.0 / n_r] * n_r, size=samples)
  boot = []
  for i in range(samples):
    drawn_p = [p for p in range(n_p) for _ in range(problem_counts[i][p])]
    drawn_s = [s for s in range(n_r) for _ in range(seed_counts[i][s])]
    total = sum(d[p][s] for p in drawn_p for s in drawn_s)
    boot.append(total / (len(drawn_p) * len(drawn_s)))
  diff = sum(map(sum, d)) / (n_p * n_r)
  extreme = sum(1 for v in boot if abs(v - diff) >= abs(diff))
  return diff, boot, (1 + extreme) / (samples + 1)


def test_paired_bootstrap_matches_the_definition():
  rng = np.random.default_rng(3)
  a = rng.integers(0, 2, size=(7, 3)).astype(float)
  b = rng.uniform(size=(7, 3))
  got = stats.paired_bootstrap(a, b, samples=300, seed=5)
  diff, boot, p = _loop_bootstrap(a.tolist(), b.tolist(), 300, 5)
  assert got["diff"] == pytest.approx(diff, abs=1e-12)
  assert got["low"] == pytest.approx(np.percentile(boot, 2.5), abs=1e-12)
  assert got["high"] == pytest.approx(np.percentile(boot, 97.5), abs=1e-12)
  assert got["p"] == pytest.approx(p, abs=1e-12)
  assert (got["problems"], got["seeds"]) == (7, 3)


def test_paired_bootstrap_extremes_and_bad_input():
  """No difference: 0 with a zero-width interval and p = 1. Every pair better by 1: p at its
  floor 1 / (samples + 1)."""
  a = np.random.default_rng(0).uniform(size=(5, 2))
  same = stats.paired_bootstrap(a, a, samples=100)
  assert (same["diff"], same["low"], same["high"], same["p"]) == (0.0, 0.0, 0.0, 1.0)
  better = stats.paired_bootstrap(a + 1, a, samples=100)
  assert better["diff"] == pytest.approx(1.0) and better["p"] == pytest.approx(1 / 101)
  with pytest.raises(ValueError, match="paired_bootstrap"):
    stats.paired_bootstrap(a, a[:, :1] * np.nan)
  with pytest.raises(ValueError, match="paired_bootstrap"):
    stats.paired_bootstrap(a[:0], a[:0])


def test_spikes_count_values_over_a_multiple_of_the_median():
  x = [1.0, 1.2, 0.9, 5.0, 1.1, 3.4, 30.0]
  median = sorted(x)[len(x) // 2]
  assert stats.spikes(x) == sum(1 for v in x if v > 3.0 * median) == 2
  assert stats.spikes(x, factor=2.0) == sum(1 for v in x if v > 2.0 * median) == 3
  assert stats.spikes([]) == 0
