"""Alignment of per-token arrays with MTP terms (DESIGN §2): term ``(t, k)`` targets ``x_{t+1+k}``."""

import jax
import jax.numpy as jnp


def future_window(x_BxS, n: int, fill, *, offset: int = 1) -> jax.Array:
  """``out[b, t, k] = x[b, t+offset+k]`` where that index is ``< S``, else ``fill``; ``[B, S, n]``.

  With the default ``offset=1``, a target-aligned array (labels, masks, 2-D weights) becomes the
  per-term array of head ``k`` at position ``t``; ``offset=0`` aligns a next-token quantity at
  position ``t+k`` (e.g. a reference model's CE against ``x_{t+1+k}``).
  """
  seq_len = x_BxS.shape[1]
  padded = jnp.pad(x_BxS, ((0, 0), (0, offset + n)), constant_values=fill)
  index_SxN = jnp.arange(seq_len)[:, None] + offset + jnp.arange(n)[None, :]
  return padded[:, index_SxN]
