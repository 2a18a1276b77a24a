"""The PNG summary of the token page (matplotlib, no display needed).

Left: the distribution of the shown quantity over the response tokens of the correct and of the
incorrect samples, and (synthetic data) over the critical tokens (of both) and the mutated ones.
Right: per pair, the score of the correct solution against the incorrect one's, with the
diagonal: a critic's mean response value (its ranking score: a point below the diagonal is a pair
ranked right), a reference's mean loss (ranked right when the correct solution's is lower).
"""

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import ticker  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from wmtp_jax.analyze.scale import Scale  # pylint: disable=wrong-import-position

BINS = 25
# a sample's score (the mean of this quantity) and whether a correct solution should score higher
PAIR_SCORE = {"critic": ("value", True), "reference": ("loss", False)}


def _groups(rows, quantity: str) -> dict[str, np.ndarray]:
  """``{label: values}`` of the tokens of each group (empty groups left out)."""
  groups: dict[str, list] = {"correct solutions": [], "incorrect solutions": [], "critical": [],
                             "mutated": []}
  for pair, values in rows:
    for sample, v in zip(pair, values):
      if sample is None:
        continue
      x = v[quantity]
      groups["correct solutions" if sample.record["is_correct"] else
             "incorrect solutions"].append(x)
      for field in ("critical", "mutated"):
        if field in sample.spans:
          groups[field].append(x[sample.spans[field]])   # spans of both sides
  return {k: np.concatenate(v) for k, v in groups.items() if v and np.concatenate(v).size}


def summary(rows: Sequence, scale: Scale, path: pathlib.Path, *, kind: str, title: str) -> None:
  """Write the two-panel PNG of ``rows`` (as ``html.page`` takes them) to ``path``; ``kind``:
  the source's (``"critic"`` or ``"reference"``), which decides the pair score."""
  quantity = scale.quantity
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
  groups = _groups(rows, quantity)
  lo, hi = scale.norm.vmin, scale.norm.vmax
  everything = np.concatenate(list(groups.values()))
  edges = np.linspace(min(lo, everything.min()), max(hi, everything.max()), BINS + 1)
  for label, x in groups.items():
    left.hist(x, bins=edges, density=True, histtype="step", linewidth=1.6,
              label=f"{label} ({x.size} tokens, mean {x.mean():.3g})")
  left.set_xlabel(scale.title)
  left.set_ylabel("density")
  left.set_title("tokens by group")
  left.legend(fontsize=8)
  score, higher = PAIR_SCORE[kind]
  pairs = [(pv[score].mean(), nv[score].mean()) for (pos, neg), (pv, nv) in rows
           if pos is not None and neg is not None]
  if pairs:
    x, y = np.asarray(pairs).T
    right.scatter(x, y, color="#1f77b4")
    bounds = [min(x.min(), y.min()), max(x.max(), y.max())]
    right.plot(bounds, bounds, color="#888", linewidth=1)
    right.xaxis.set_major_locator(ticker.MaxNLocator(5))
    ranked = (x > y) if higher else (x < y)
    side = "higher" if higher else "lower"
    right.set_title(f"mean {score} per pair: ranked right (correct {side}) in "
                    f"{int(ranked.sum())} of {len(pairs)}")
    corner = (0.98, 0.02, "right", "bottom") if higher else (0.02, 0.98, "left", "top")
    right.text(*corner[:2], "ranked right on this side of the diagonal", ha=corner[2],
               va=corner[3], transform=right.transAxes, color="#555", fontsize=8)
  else:
    right.text(0.5, 0.5, "no problem with both a correct and an incorrect solution",
               ha="center", va="center", transform=right.transAxes)
  right.set_xlabel(f"correct solution: mean {score}")
  right.set_ylabel(f"incorrect solution: mean {score}")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
