"""Argument checks shared by the pure functions: errors name the argument and both shapes.

These run at trace time on static shapes, so they cost nothing inside ``jax.jit``.
"""

from collections.abc import Sequence


def check_rank(name: str, x, ranks: Sequence[int]) -> None:
  """Raise ``ValueError`` unless ``x.ndim`` is one of ``ranks``."""
  if x.ndim not in ranks:
    want = " or ".join(str(r) for r in ranks)
    raise ValueError(f"{name} must have rank {want}, got shape {tuple(x.shape)}")


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
  """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(
        f"{name_a} shape {tuple(a.shape)} does not match {name_b} shape {tuple(b.shape)}")


def check_dim(name_a: str, a, axis_a: int, name_b: str, b, axis_b: int) -> None:
  """Raise ``ValueError`` unless ``a.shape[axis_a] == b.shape[axis_b]``."""
  if a.shape[axis_a] != b.shape[axis_b]:
    raise ValueError(
        f"{name_a} shape {tuple(a.shape)} (axis {axis_a}) does not match {name_b} shape "
        f"{tuple(b.shape)} (axis {axis_b})")
