"""Statistics of an experiment (numpy only): mean ± 95% CI over seeds, the paired bootstrap over
problems × seeds, gradient-norm spikes.

* ``mean_ci(x_R)``: mean and the half width of the 95% Student-t interval over ``R`` seeds
  (``T975``: the two-sided 95% quantiles for 1–30 degrees of freedom; 1.96 beyond).
* ``paired_bootstrap(a_PxR, b_PxR)``: the difference of two arms' per-problem scores ``[P, R]``
  (problem × seed, the same problems and seeds in both: paired), mean over both axes; its 95% CI
  from ``samples`` bootstrap resamples that draw problems and seeds with replacement
  (a two-way bootstrap: each resample's statistic is the mean of ``D[p_i, s_j]`` over the drawn
  problems ``p_i`` and seeds ``s_j``); the two-sided p-value of "no difference" from the same
  resamples, centred on the observed difference: ``(1 + #{|d_b − d| ≥ |d|}) / (samples + 1)``.
* ``spikes(x)``: steps whose gradient norm exceeds ``factor`` × the run's median.
"""

import numpy as np

# Two-sided 95% quantiles of Student's t, t_{0.975, df} for df = 1 … 30.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(x_R) -> tuple[float, float, int]:
  """``(mean, half width of the 95% CI, R)`` of the values ``[R]`` (NaNs left out); the half
  width is NaN for fewer than two values."""
  x_R = np.asarray(x_R, np.float64)
  x_R = x_R[~np.isnan(x_R)]
  r = len(x_R)
  if r == 0:
    return float("nan"), float("nan"), 0
  if r == 1:
    return float(x_R[0]), float("nan"), 1
  t = T975[r - 2] if r - 1 <= len(T975) else 1.96
  return float(x_R.mean()), float(t * x_R.std(ddof=1) / np.sqrt(r)), r


def resample_counts(rng: np.random.Generator, samples: int, n: int):
  """``[samples, n]``: how often each of ``n`` items is drawn in each resample of ``n`` draws
  with replacement."""
  return rng.multinomial(n, np.full(n, 1.0 / n), size=samples)


def paired_bootstrap(a_PxR, b_PxR, *, samples: int = 10000, seed: int = 0) -> dict[str, float]:
  """``{"diff", "low", "high", "p", "problems", "seeds"}``: the mean of ``a − b`` over problems
  × seeds, its bootstrap 95% CI and p-value (module docstring). The problem counts are drawn
  first, then the seed counts, from ``np.random.default_rng(seed)``."""
  d_PxR = np.asarray(a_PxR, np.float64) - np.asarray(b_PxR, np.float64)
  if d_PxR.ndim != 2 or d_PxR.size == 0 or np.isnan(d_PxR).any():
    raise ValueError(f"paired_bootstrap: needs [P, R] scores of both arms without NaN, got "
                     f"shapes {np.shape(a_PxR)} and {np.shape(b_PxR)}")
  p, r = d_PxR.shape
  rng = np.random.default_rng(seed)
  problems_BxP = resample_counts(rng, samples, p)
  seeds_BxR = resample_counts(rng, samples, r)
  boot_B = np.einsum("bp,pr,br->b", problems_BxP, d_PxR, seeds_BxR) / (p * r)
  diff = float(d_PxR.mean())
  low, high = np.percentile(boot_B, [2.5, 97.5])
  extreme = np.count_nonzero(np.abs(boot_B - diff) >= abs(diff))
  return {"diff": diff, "low": float(low), "high": float(high),
          "p": float((1 + extreme) / (samples + 1)), "problems": p, "seeds": r}


def spikes(x_T, factor: float = 3.0) -> int:
  """How many of the values ``[T]`` (a run's gradient norms) exceed ``factor`` × their
  median."""
  x_T = np.asarray(x_T, np.float64)
  return int(np.count_nonzero(x_T > factor * np.median(x_T))) if len(x_T) else 0
