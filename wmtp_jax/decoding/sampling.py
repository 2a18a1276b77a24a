"""How the next token is chosen: greedy (``temperature == 0``; deterministic), or temperature +
nucleus (top-p). ``Sampling`` is the caller's choice; ``Knobs`` is the same inside the jitted
decoding functions (the mode static, the values traced)."""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen: greedy when ``temperature == 0``, else temperature + top-p."""
  temperature: float = 0.0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature} must be ≥ 0")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  @property
  def nucleus(self) -> bool:
    return self.top_p < 1.0


class Knobs(NamedTuple):
  """``Sampling`` inside the jitted functions: the mode is static (one compilation per mode),
  ``temperature`` and ``top_p`` are traced (no recompilation when they change)."""
  greedy: bool
  nucleus: bool
  temperature: Any
  top_p: Any


def warp_probs(logits, sampling: Sampling | Knobs):
  """Next-token probabilities ``[..., V]`` (fp32) of ``logits [..., V]`` after temperature and
  nucleus (top-p) filtering."""
  logits = logits.astype(jnp.float32)
  if sampling.greedy:
    return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.float32)
  probs = jax.nn.softmax(logits / sampling.temperature, axis=-1)
  if sampling.nucleus:
    sorted_desc = -jnp.sort(-probs, axis=-1)
    # Keep the smallest set of most likely tokens whose mass reaches top_p (at least one).
    keep_sorted = (jnp.cumsum(sorted_desc, axis=-1) - sorted_desc) < sampling.top_p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    probs = jnp.where(probs >= threshold, probs, 0.0)
    probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
  return probs


def sample_token(rng, logits, sampling: Sampling | Knobs):
  """One token per row of ``logits [..., V]`` (argmax when greedy)."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return sample_from(rng, warp_probs(logits, sampling))


def sample_from(rng, probs):
  """A token per row of ``probs [..., V]``."""
  return jax.random.categorical(rng, jnp.log(probs), axis=-1).astype(jnp.int32)
