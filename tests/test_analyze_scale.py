"""analyze.scale: centres are white, ranges follow the shown values, unknown names are errors."""

import numpy as np
import pytest

from wmtp_jax.analyze import scale


def test_centres_and_ranges():
  x = np.linspace(-1.0, 3.0, 101)
  td = scale.fit("td", x)
  assert td.norm(0.0) == pytest.approx(0.5) and td.norm.vmax == pytest.approx(-td.norm.vmin)
  weight = scale.fit("weight", np.array([0.1, 0.5, 1.0, 2.0, 3.0]))
  assert weight.norm(1.0) == pytest.approx(0.5) and weight.norm.vmin < 1.0 < weight.norm.vmax
  rho1 = scale.fit("weight", np.repeat([0.0, 1.0], [4, 6]))  # Rho-1's {0, 1}: 1 stays white
  assert rho1.norm(1.0) == pytest.approx(0.5) and rho1.norm(0.0) == pytest.approx(0.0)
  loss = scale.fit("loss", np.array([0.5, 2.0, 4.0]))
  assert loss.norm.vmin == 0.0 and 2.0 < loss.norm.vmax <= 4.0
  value = scale.fit("value", np.full(5, 0.5))                 # constant: still a valid range
  assert value.norm.vmax > value.norm.vmin
  assert [p for p, _ in value.stops(3)] == [0.0, 0.5, 1.0]
  assert td.hex(10.0) == td.hex(td.norm.vmax) and td.text_colour(10.0) in ("#000", "#fff")


def test_unknown_quantity():
  with pytest.raises(ValueError, match="unknown quantity 'values'"):
    scale.fit("values", np.zeros(3))
