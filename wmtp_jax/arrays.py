"""Argument checks shared by the pure functions (errors name the argument and both shapes) and
``future_window``, the per-term view ``[B, S, n]`` of a per-token array ``[B, S]``.

The checks run at trace time on static shapes, so they cost nothing inside ``jax.jit``.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


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


def future_window(x_BxS, n: int, fill, *, offset: int = 1) -> jax.Array:
  """``out[b, t, k] = x[b, t+offset+k]`` where that index is ``< S``, else ``fill``; ``[B, S, n]``.

  With the default ``offset=1``, a target-aligned array (labels, masks, 2-D weights) becomes the
  per-term array of head ``k`` at position ``t``; ``offset=0`` aligns a next-token quantity at
  position ``t+k`` (e.g. a reference model's CE against ``x_{t+1+k}``).
  """
  seq_len = x_BxS.shape[1]
  padded = jnp.pad(x_BxS, ((0, 0), (0, offset + n)), constant_values=fill)
  index_Sxn = jnp.arange(seq_len)[:, None] + offset + jnp.arange(n)[None, :]
  return padded[:, index_Sxn]
