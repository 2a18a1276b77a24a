"""Control weights (issue 14, DESIGN §8): weights that keep some property of a method's own token
weights and destroy the rest, to tell "the critic knows which tokens matter" from "any
non-uniform weighting helps"; and the mean-1 rescale of a step's weights.

Shapes follow the package legend (the ``wmtp_jax`` docstring). ``mask [B, S]`` is the
target-aligned response mask (``mask[b, t]``: token ``x_t`` is a response target, DESIGN §2).
Weights are either target-aligned ``[B, S]`` (valid where ``mask``) or per term ``[B, S, n]``
(head ``k`` at position ``t``, target ``x_{t+1+k}``; valid where ``future_valid(mask, n)``).

  * ``shuffled_weights``: the method's weights permuted at random among the valid response targets
    of each row (of each row and head for ``[B, S, n]``): the same weights per row, no positional
    information. Entries outside the valid set stay where they are, so the zero weights of prompt
    and padding never move into the response (the original shuffled over the attention mask).
  * ``matched_random_weights``: i.i.d. LogNormal weights whose mean and std (before clipping) are
    the given ones (the running mean and std of the method's own weights), clipped to the method's
    range: the same distribution shape, no information at all.
  * ``oracle_weights`` (synthetic data): ``high`` on the ground-truth critical targets and ``low``
    on the others, then scaled so that the mean over the valid entries is ``mean`` (the method's
    own mean weight). What a critic that knew the critical tokens exactly could give, within the
    method's range before the scaling (the scaled weights may leave it).
  * ``mean_one_scale``: the factor that brings weights of sum ``Σw`` over ``N`` valid terms to
    mean 1 (``N/Σw``); the policy objectives apply it to a whole step (``config.weighting.
    renormalize = "mean1"``).

All are pure and ``jax.jit``-compiled; float outputs are float32; the random ones take a PRNG key.
"""

import jax
import jax.numpy as jnp

from wmtp_jax.arrays import check_dim, check_rank, check_same_shape
from wmtp_jax.weighting.common import bool_mask, f32, region_terms
from wmtp_jax.weighting.heads import future_valid

CONTROLS = ("none", "shuffled", "random_matched", "oracle")
RENORMALIZE = ("none", "mean1")


def _valid_terms(weights, mask):
  """Validity of the entries of ``weights`` ``[B, S]`` / ``[B, S, n]`` from ``mask [B, S]``."""
  check_rank("weights", weights, (2, 3))
  check_rank("mask", mask, (2,))
  check_dim("mask", mask, 0, "weights", weights, 0)
  check_dim("mask", mask, 1, "weights", weights, 1)
  if weights.ndim == 2:
    return bool_mask(mask)
  return future_valid(mask, weights.shape[2])


@jax.jit
def shuffled_weights(key, weights, mask):
  """The valid weights of each row (each row and head) in a uniformly random order, float32.

  Along axis 1 (positions), per row ``b`` (and head ``k``), the weights at the valid positions
  are permuted among those positions; every other entry keeps its value and place.

  Args:
    key: a PRNG key.
    weights: ``[B, S]`` target-aligned or ``[B, S, n]`` per term.
    mask: ``[B, S]`` response mask (for ``[B, S, n]``: term ``(t, k)`` is valid iff
      ``mask[b, t+1+k]``, ``future_valid``).

  Returns:
    The shuffled weights, the shape of ``weights``.
  """
  valid = _valid_terms(weights, mask)
  weights = f32(weights)
  # Valid entries first in a random order, then the others by position (stable sorts).
  source = jnp.argsort(jnp.where(valid, jax.random.uniform(key, weights.shape), 2.0), axis=1,
                       stable=True)
  # Valid positions first in their order, then the others by position: the same tail.
  target = jnp.argsort(~valid, axis=1, stable=True)
  moved = jnp.take_along_axis(weights, source, axis=1)  # moved[i] goes to position target[i]
  return jnp.take_along_axis(moved, jnp.argsort(target, axis=1), axis=1)


def lognormal_parameters(mean, std):
  """``(μ, σ)`` of the LogNormal with this mean and std: ``σ² = log(1 + std²/mean²)``,
  ``μ = log(mean) − σ²/2`` (``mean > 0``), float32 scalars."""
  mean, std = f32(mean), f32(std)
  var_log = jnp.log1p(jnp.square(std / mean))
  return jnp.log(mean) - 0.5 * var_log, jnp.sqrt(var_log)


@jax.jit
def matched_random_weights(key, mask, *, mean, std, min_weight, max_weight):
  """i.i.d. ``clip(LogNormal, min_weight, max_weight)`` weights on the valid entries, else 0.

  The LogNormal has mean ``mean`` and std ``std`` before clipping (``lognormal_parameters``;
  ``std = 0`` gives the constant ``mean``). Numbers are traced; ``mean`` must be positive.

  Args:
    key: a PRNG key.
    mask: ``[B, S]`` (or per term ``[B, S, n]``), nonzero where a weight is drawn.
    mean, std: the moments to match, e.g. the running mean and std of the method's weights.
    min_weight, max_weight: the method's clip range.

  Returns:
    ``[B, S]`` float32 (the shape of ``mask``).
  """
  check_rank("mask", mask, (2, 3))
  mu, sigma = lognormal_parameters(mean, std)
  w = jnp.exp(mu + sigma * jax.random.normal(key, mask.shape, jnp.float32))
  return jnp.where(bool_mask(mask), jnp.clip(w, f32(min_weight), f32(max_weight)), 0.0)


@jax.jit
def oracle_weights(critical_mask, valid, *, mean, low, high):
  """Ground-truth weights: ``high`` on critical targets, ``low`` elsewhere, scaled to ``mean``.

  ``w = c·(high if critical else low)`` on the valid entries (0 elsewhere) with
  ``c = mean / (mean of the unscaled w over the valid entries)`` (``c = 1`` when that is 0 or
  nothing is valid), so the mean over the valid entries is ``mean``. A per-term entry ``(t, k)``
  is critical iff its target ``x_{t+1+k}`` is (``critical_mask[b, t+1+k]``).

  Args:
    critical_mask: ``[B, S]`` target-aligned critical span (``data.template``'s
      ``critical_mask``).
    valid: ``[B, S]`` response mask, or ``[B, S, n]`` validity of the terms.
    mean: the mean weight to match (the method's own, over the same valid entries).
    low, high: the weights of other and critical targets before scaling (the method's range).

  Returns:
    float32, the shape of ``valid``.
  """
  check_rank("valid", valid, (2, 3))
  critical = region_terms("critical_mask", critical_mask, "valid", valid)
  valid = bool_mask(valid)
  raw = jnp.where(valid, jnp.where(critical, f32(high), f32(low)), 0.0)
  count = jnp.sum(valid, dtype=jnp.float32)
  raw_mean = jnp.sum(raw) / jnp.maximum(count, 1.0)
  return raw * jnp.where(raw_mean > 0.0, f32(mean) / jnp.where(raw_mean > 0.0, raw_mean, 1.0), 1.0)


@jax.jit
def mean_one_scale(weight_sum, count):
  """``count / weight_sum``: the factor giving weights of that sum over ``count`` valid terms a
  mean of 1 (float32 scalar; 1 when either is 0)."""
  weight_sum, count = f32(weight_sum), f32(count)
  ok = (weight_sum > 0.0) & (count > 0.0)
  return jnp.where(ok, count / jnp.where(ok, weight_sum, 1.0), 1.0)


def check_options(weighting_cfg, where: str = "config.weighting") -> None:
  """``control`` in ``CONTROLS`` and ``renormalize`` in ``RENORMALIZE``, else a ``ValueError``
  naming the key."""
  for name, known in (("control", CONTROLS), ("renormalize", RENORMALIZE)):
    if weighting_cfg[name] not in known:
      raise ValueError(f"{where}.{name}={weighting_cfg[name]!r}: expected one of {known}")

