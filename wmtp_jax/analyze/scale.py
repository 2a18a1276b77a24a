"""Colour scales of the token page and its PNG: one per quantity, fitted to the shown tokens.

Differences (TD error, advantage, excess loss) are centred on 0 and weights on 1 (the colour
map's middle colour), with the range of the 98th percentile of the distance from the centre
(weights: the 2nd and 98th percentiles, either side of 1); a value spans the 2nd to the 98th
percentile, a loss 0 to its 98th percentile. Tokens beyond the range get the end colour (the
tooltip has the exact number).
"""

import dataclasses

import matplotlib
from matplotlib import colors
import numpy as np

# quantity → (title, colour map, centre or None for a plain range, ``loss``: from 0)
QUANTITIES = {
    "value": ("critic value Vₜ", "RdYlGn", None),
    "td": ("TD error δₜ = γ·Vₜ − Vₜ₋₁", "RdYlGn", 0.0),
    "advantage": ("GAE advantage Aₜ", "RdYlGn", 0.0),
    "weight": ("token weight", "coolwarm", 1.0),
    "loss": ("reference cross-entropy of xₜ", "Reds", "loss"),
    "excess": ("excess loss CE_policy − CE_reference", "coolwarm", 0.0),
}
RANGE_NOTE = ("differences are centred on 0 and weights on 1 (the middle colour); the ends are the "
              "2nd / 98th percentile of the shown tokens, beyond them the end colour")
LEGEND_STOPS = 11
PERCENTILE = 98.0


@dataclasses.dataclass(frozen=True)
class Scale:
  """``quantity``'s colours: ``norm`` maps a number to [0, 1] of ``cmap``."""
  quantity: str
  title: str
  cmap: str
  norm: colors.Normalize

  def rgba(self, x) -> np.ndarray:
    """``[..., 4]`` float colours of ``x``."""
    return matplotlib.colormaps[self.cmap](np.clip(self.norm(np.asarray(x, np.float64)), 0, 1))

  def hex(self, x: float) -> str:
    return colors.to_hex(self.rgba(x))

  def text_colour(self, x: float) -> str:
    """Black or white, whichever reads better on the colour of ``x``."""
    r, g, b, _ = self.rgba(x)
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#fff"

  def stops(self, count: int = LEGEND_STOPS) -> list[tuple[float, float]]:
    """``count`` evenly spaced ``(position in [0, 1], value)`` along the colour bar."""
    return [(p, float(self.norm.inverse(p))) for p in np.linspace(0.0, 1.0, count)]


def fit(quantity: str, values: np.ndarray) -> Scale:
  """The scale of ``quantity`` for the shown tokens' ``values`` (module docstring)."""
  if quantity not in QUANTITIES:
    raise ValueError(f"unknown quantity {quantity!r}; known: {sorted(QUANTITIES)}")
  title, cmap, centre = QUANTITIES[quantity]
  x = np.asarray(values, np.float64).ravel()
  x = x[np.isfinite(x)] if x.size else np.zeros(1)
  tiny = 1e-6
  if centre is None:
    lo, hi = np.percentile(x, [100 - PERCENTILE, PERCENTILE])
    norm = colors.Normalize(lo, max(hi, lo + tiny))
  elif centre == "loss":
    norm = colors.Normalize(0.0, max(np.percentile(x, PERCENTILE), tiny))
  elif quantity == "weight":  # asymmetric around 1: e.g. clip [0.1, 3], or Rho-1's {0, 1}
    lo, hi = np.percentile(x, [100 - PERCENTILE, PERCENTILE])
    norm = colors.TwoSlopeNorm(1.0, min(lo, 1.0 - tiny), max(hi, 1.0 + tiny))
  else:
    half = max(np.percentile(np.abs(x - centre), PERCENTILE), tiny)
    norm = colors.Normalize(centre - half, centre + half)
  return Scale(quantity, title, cmap, norm)
