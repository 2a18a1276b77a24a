"""Where metrics go: tensorboardX (``WORKDIR/tb``), ``WORKDIR/metrics.jsonl`` and a console line.

Only process 0 writes. ``metrics.jsonl`` gets one JSON object per logged step
(``{"step": …, "phase": …, "<name>": value, …}``), appended and flushed, so a crash loses nothing
already logged; a run resumed at step k first drops the rows it will write again (those after k),
so every step is logged once. Vector metrics (per-head losses) are logged as ``name/0``,
``name/1`` … Histograms (``histogram(counts, upper)`` in a metrics dict) go to tensorboard only.
``final_metrics`` and ``best`` read a run's ``metrics.jsonl`` back.
"""

import contextlib
import json
import logging
import math
import pathlib
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


METRICS_FILE = "metrics.jsonl"
_MEMORY = "memory/"  # the compiled step's memory, logged at the step a run (re)starts from


class MetricsLogger:
  """Scalars and histograms of one phase of a run (``phase`` prefixes the tensorboard tags),
  started (or resumed) after step ``start_step``."""

  def __init__(self, workdir: pathlib.Path, *, phase: str, total_steps: int, start_step: int = 0):
    self.phase, self.total_steps = phase, total_steps
    self.primary = jax.process_index() == 0
    self._start = time.time()
    self._start_step: int | None = None
    if self.primary:
      import tensorboardX  # pylint: disable=import-outside-toplevel  (only the writer needs it)
      workdir.mkdir(parents=True, exist_ok=True)
      _drop_rows_after(workdir / METRICS_FILE, start_step)
      self._tb = tensorboardX.SummaryWriter(str(workdir / "tb"))
      self._jsonl = open(workdir / METRICS_FILE, "a", buffering=1)

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
    log.info("[%s] step %d/%d %s eta %s", self.phase, step, self.total_steps, shown,
             _duration(eta))

  def close(self) -> None:
    if self.primary:
      self._tb.close()
      self._jsonl.close()


def _read(path: pathlib.Path) -> list[dict]:
  """The rows of ``path``, less a last line cut short (a kill or a full disk while writing it)."""
  if not path.is_file():
    return []
  lines = path.read_text().splitlines()
  rows = [json.loads(line) for line in lines[:-1] if line.strip()]
  with contextlib.suppress(json.JSONDecodeError):
    rows += [json.loads(line) for line in lines[-1:] if line.strip()]
  return rows


def _drop_rows_after(path: pathlib.Path, step: int) -> None:
  """Drop the rows of ``path`` a run resumed at ``step`` writes again: those after ``step`` and
  the memory row at ``step`` (a fresh start is a resume at step 0); and a last line cut short."""
  rows = _read(path)
  kept = [r for r in rows if r["step"] < step or (r["step"] == step and
                                                   not any(k.startswith(_MEMORY) for k in r))]
  written = sum(1 for l in path.read_text().splitlines() if l.strip()) if path.is_file() else 0
  if len(kept) == written:
    return
  log.info("%s: dropped %d rows past step %d (logged before the resume)", path,
           written - len(kept), step)
  tmp = path.with_suffix(".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
  tmp.replace(path)


def final_metrics(workdir: pathlib.Path, step: int) -> dict[str, float]:
  """The metrics ``training.loop.run`` returned when the run of ``workdir`` ended at ``step``: every
  value logged at ``step`` but the durations (``time/…``) and memory, as floats."""
  values: dict[str, float] = {}
  for row in _read(workdir / METRICS_FILE):
    if row["step"] == step:
      values.update({k: float(v) for k, v in row.items() if k not in ("step", "phase")
                     and not k.startswith(("time/", _MEMORY))})
  return values


def best(workdir: pathlib.Path, metric: str, mode: str) -> dict | None:
  """``{"metric", "value", "step"}`` of the best (``mode`` ``min`` | ``max``) finite value of
  ``metric`` in ``workdir``'s ``metrics.jsonl``; ``None`` if it was never logged."""
  logged = [(float(r[metric]), r["step"]) for r in _read(workdir / METRICS_FILE) if metric in r]
  logged = [(v, s) for v, s in logged if math.isfinite(v)]
  if not logged:
    return None
  value, step = (min if mode == "min" else max)(logged, key=lambda vs: vs[0])
  return {"metric": metric, "value": value, "step": step}


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, s = divmod(int(seconds), 60)
  return f"{minutes}m{s:02d}s"
