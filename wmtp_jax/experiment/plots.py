"""The report's figures (matplotlib, PNG) from the runs' own files (``runfiles.RunFiles``).

* ``curves.png``: held-out ``eval_pass_at_1`` and the unweighted validation loss against the
  cumulative train FLOPs, per arm the mean over seeds with the seeds' min–max band;
* ``weights.png``: per weighted arm, the last logged weight histogram (mean share per bucket
  over seeds);
* ``stability.png``: the gradient norm against FLOPs (mean and band) and the across-seed standard
  deviation of the fine-tuned pass@1 per arm.
"""

import collections
import pathlib

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from wmtp_jax.experiment.runfiles import RunFiles  # pylint: disable=wrong-import-position
from wmtp_jax.training import flops  # pylint: disable=wrong-import-position

VAL_KEYS = ("val_unweighted", "val_loss")  # the first one a run logs is its curve


def curve(runs: list[RunFiles], key: str) -> tuple[np.ndarray, ...] | None:
  """``(FLOPs [T], mean [T], low [T], high [T])`` of ``key`` over the steps all ``runs`` (the
  seeds of one arm) logged it with the cumulative FLOPs; None when none did."""
  by_step = collections.defaultdict(list)
  for files in runs:
    for row in files.rows:
      if key in row and flops.CUMULATIVE in row and isinstance(row[key], (int, float)):
        by_step[row["step"]].append((row[flops.CUMULATIVE], row[key]))
  steps = sorted(s for s, v in by_step.items() if len(v) == len(runs))
  if not steps:
    return None
  x_TxR = np.array([[f for f, _ in by_step[s]] for s in steps])
  y_TxR = np.array([[y for _, y in by_step[s]] for s in steps])
  return x_TxR.mean(1), y_TxR.mean(1), y_TxR.min(1), y_TxR.max(1)


def _val_key(runs: list[RunFiles]) -> str:
  logged = {k for files in runs for row in files.rows for k in row}
  return next((k for k in VAL_KEYS if k in logged), VAL_KEYS[0])


def _draw_curves(ax, arms: dict[str, list[RunFiles]], key_of, ylabel: str) -> None:
  for arm, runs in arms.items():
    c = curve(runs, key_of(runs))
    if c is not None:
      x, mean, low, high = c
      (line,) = ax.plot(x, mean, label=arm, marker=".")
      ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
  ax.set_xlabel("cumulative train FLOPs")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)


def draw(arms: dict[str, list[RunFiles]], out_dir: pathlib.Path) -> list[pathlib.Path]:
  """The figures of the finished runs ``{arm: [its seeds' runs]}`` in ``out_dir``; their paths."""
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  _draw_curves(axes[0], arms, lambda _: "eval_pass_at_1", "held-out pass@1 (greedy, interval)")
  _draw_curves(axes[1], arms, _val_key, "validation loss (unweighted)")
  axes[0].legend(fontsize=8)
  paths.append(_save(fig, out_dir / "curves.png"))

  weighted = {a: [f.histogram for f in runs if f.histogram is not None] for a, runs in arms.items()}
  weighted = {a: h for a, h in weighted.items() if h}
  if weighted:
    fig, axes = plt.subplots(1, len(weighted), figsize=(4 * len(weighted), 3.5), squeeze=False)
    for ax, (arm, hists) in zip(axes[0], weighted.items()):
      limits = hists[0][0]
      shares = np.mean([counts / max(counts.sum(), 1) for _, counts in hists], axis=0)
      width = limits[0] if len(limits) == 1 else limits[1] - limits[0]
      ax.bar(limits - width / 2, shares, width=width)
      ax.set_title(arm, fontsize=9)
      ax.set_xlabel("token weight")
    axes[0][0].set_ylabel("share of valid terms (last logged step)")
    paths.append(_save(fig, out_dir / "weights.png"))

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  _draw_curves(axes[0], arms, lambda _: "grad_norm", "gradient norm (before clipping)")
  axes[0].legend(fontsize=8)
  names = list(arms)
  stds = [np.std([f.metrics.get("finetuned/pass@1", np.nan) for f in arms[a]], ddof=1)
          if len(arms[a]) > 1 else np.nan for a in names]
  axes[1].bar(range(len(names)), stds)
  axes[1].set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
  axes[1].set_ylabel("across-seed std of fine-tuned pass@1")
  paths.append(_save(fig, out_dir / "stability.png"))
  return paths


def _save(fig, path: pathlib.Path) -> pathlib.Path:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
