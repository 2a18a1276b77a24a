"""Where metrics go: tensorboardX (``WORKDIR/tb``), ``WORKDIR/metrics.jsonl`` and a console line.

Only process 0 writes. ``metrics.jsonl`` gets one JSON object per logged step
(``{"step": …, "phase": …, "<name>": value, …}``), appended and flushed, so a crash loses nothing
already logged. Vector metrics (per-head losses) are logged as ``name/0``, ``name/1`` …
Histograms (``histogram(counts, upper)`` in a metrics dict) go to tensorboard only.
"""

import json
import logging
import math
import pathlib
import sys
import time

import jax
import numpy as np

log = logging.getLogger("wmtp_jax")


def histogram(counts_K, upper) -> dict:
  """A histogram metric: bucket counts ``[K]`` of equal buckets over ``[0, upper]`` (averaging it
  over micro-batches or devices keeps it a histogram)."""
  return {"histogram_counts": counts_K, "histogram_upper": upper}


def split_histograms(metrics: dict) -> tuple[dict, dict[str, tuple[np.ndarray, float]]]:
  """``(other metrics, {name: (counts [K], upper)})`` of host-side metrics."""
  is_hist = lambda v: isinstance(v, dict) and "histogram_counts" in v
  hists = {k: (np.asarray(v["histogram_counts"]), float(v["histogram_upper"]))
           for k, v in metrics.items() if is_hist(v)}
  return {k: v for k, v in metrics.items() if not is_hist(v)}, hists


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
  """``{"per_head": [a, b]}`` → ``{"per_head/0": a, "per_head/1": b}``; scalars as floats."""
  out = {}
  for name, value in metrics.items():
    value = np.asarray(value)
    if value.ndim == 0:
      out[prefix + name] = float(value)
    else:
      for i, v in enumerate(value.reshape(-1)):
        out[f"{prefix}{name}/{i}"] = float(v)
  return out


class MetricsLogger:
  """Scalars and histograms of one phase of a run (``phase`` prefixes the tensorboard tags)."""

  def __init__(self, workdir: pathlib.Path, *, phase: str, total_steps: int):
    self.phase, self.total_steps = phase, total_steps
    self.primary = jax.process_index() == 0
    self._start = time.time()
    self._start_step: int | None = None
    if self.primary:
      import tensorboardX  # pylint: disable=import-outside-toplevel  (only the writer needs it)
      workdir.mkdir(parents=True, exist_ok=True)
      self._tb = tensorboardX.SummaryWriter(str(workdir / "tb"))
      self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)

  def write(self, step: int, scalars: dict[str, float],
            histograms: dict[str, tuple[np.ndarray, float]] | None = None):
    """Scalars to tensorboard and ``metrics.jsonl``; ``histograms`` (``{name: (counts [K],
    upper)}``, see ``histogram``) to tensorboard only, summarised from the bucket centres."""
    if not self.primary:
      return
    for name, value in scalars.items():
      self._tb.add_scalar(f"{self.phase}/{name}", value, step)
    for name, (counts, upper) in (histograms or {}).items():
      if counts.sum() > 0:
        limits = upper * np.arange(1, len(counts) + 1) / len(counts)
        centres = limits - upper / (2 * len(counts))
        self._tb.add_histogram_raw(
            f"{self.phase}/{name}", min=0.0, max=upper, num=counts.sum(),
            sum=(counts * centres).sum(), sum_squares=(counts * centres**2).sum(),
            bucket_limits=limits.tolist(), bucket_counts=counts.tolist(), global_step=step)
    record = {"step": step, "phase": self.phase,
              **{k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + "\n")

  def progress(self, step: int, scalars: dict[str, float]) -> None:
    """One console line: step, loss, throughput and ETA."""
    if not self.primary:
      return
    if self._start_step is None:
      self._start_step, self._start = step, time.time()
    done = step - self._start_step
    elapsed = time.time() - self._start
    eta = (self.total_steps - step) * elapsed / done if done > 0 else float("nan")
    shown = " ".join(f"{k}={scalars[k]:.4g}" for k in ("loss", "unweighted", "grad_norm",
                                                       "tokens_per_s") if k in scalars)
    print(f"[{self.phase}] step {step}/{self.total_steps} {shown} eta {_duration(eta)}",
          file=sys.stderr, flush=True)

  def close(self) -> None:
    if self.primary:
      self._tb.close()
      self._jsonl.close()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, s = divmod(int(seconds), 60)
  return f"{minutes}m{s:02d}s"
