"""Token weighting for WMTP (DESIGN.md §3): TD errors, GAE, λ-returns, exponential weights,
EMA statistics, Rho-1 selection, per-position softmax over heads, normalisation and logging stats.

Modules (every public name is re-exported here, e.g. ``weighting.gae_advantages``):
  * ``returns``: ``td_errors``, ``gae_advantages``, ``lambda_returns``;
  * ``whitening``: ``exp_weights``, ``EMAStats``, ``Moments``, ``ema_init``, ``masked_moments``,
    ``ema_update``, ``ema_update_from_moments``;
  * ``rho1``: ``RHO1_MODES``, ``per_head_quantile``, ``rho1_weights``, ``rho1_continuous_weights``;
  * ``heads``: ``future_valid``, ``softmax_head_weights``, ``normalize_weights``;
  * ``stats``: ``td_stats``, ``weight_stats``, ``explained_variance``,
    ``selection_ratio_per_head``, ``weight_histogram``;
  * ``diagnostics`` (issue 13, DESIGN §8): ``mean_response_value``, ``pairwise_accuracy``,
    ``auroc``, ``localization_hits``, ``weight_lift``, ``weight_entropy``, ``clipped_shares``,
    ``token_error_rates``;
  * ``controls`` (issue 14, DESIGN §8): ``CONTROLS``, ``RENORMALIZE``, ``shuffled_weights``,
    ``lognormal_parameters``, ``matched_random_weights``, ``oracle_weights``, ``mean_one_scale``,
    ``check_options``.

All public functions are pure, ``jax.jit``-compiled and vectorised (no Python loop over batch or
time; recurrences use ``lax.scan`` on CPU and ``lax.associative_scan`` elsewhere). Inputs of any
float dtype (bf16, f16, f32) are cast to float32 and every float output is float32.

Shapes follow the package legend (the ``wmtp_jax`` docstring): ``B`` rows, ``S`` positions, ``n``
MTP heads.

Index conventions (DESIGN.md §2):
  * ``mask[b, t]`` is the response mask of token ``x_t`` (nonzero = valid; bool, int or float).
    ``T`` is, per row, the last index with ``mask = 1``; a row without a valid token yields zeros.
  * ``values[b, t]`` = V(s_t), the value of the state after reading ``x_0 … x_t``. Prompt
    positions have values too; the mask only selects which outputs are kept.
  * Per-token quantities ``[B, S]`` (TD errors, advantages, 2-D weights) live on the *target*
    token: head ``k`` at position ``t`` uses entry ``t+1+k``.
  * Per-term quantities ``[B, S, n]``: entry ``[b, t, k]`` is head ``k`` at position ``t``
    (target ``x_{t+1+k}``); the term is valid iff ``t+1+k ≤ S−1`` and ``mask[b, t+1+k]``
    (see ``future_valid``).

Numeric hyper-parameters (γ, λ, β, clip bounds, momentum, temperature, …) are traced, so changing
them does not recompile. Options that change shapes or code paths (``n_future``, ``mode``,
``head0_always``, ``normalize``) and the selection fractions ``k_percent`` / ``percentile``
(validated and converted in float64 at trace time) are static.
"""

from wmtp_jax.weighting.controls import (CONTROLS, RENORMALIZE, check_options,
                                         lognormal_parameters, matched_random_weights,
                                         mean_one_scale, oracle_weights, shuffled_weights)
from wmtp_jax.weighting.diagnostics import (auroc, clipped_shares, localization_hits,
                                            mean_response_value, pairwise_accuracy,
                                            token_error_rates, weight_entropy, weight_lift)
from wmtp_jax.weighting.heads import future_valid, normalize_weights, softmax_head_weights
from wmtp_jax.weighting.returns import gae_advantages, lambda_returns, td_errors
from wmtp_jax.weighting.rho1 import (RHO1_MODES, per_head_quantile, rho1_continuous_weights,
                                     rho1_weights)
from wmtp_jax.weighting.stats import (explained_variance, selection_ratio_per_head, td_stats,
                                      weight_histogram, weight_stats)
from wmtp_jax.weighting.whitening import (EMAStats, Moments, ema_init, ema_update,
                                          ema_update_from_moments, exp_weights, masked_moments)

__all__ = [
    "td_errors", "gae_advantages", "lambda_returns",
    "exp_weights", "EMAStats", "Moments", "ema_init", "masked_moments", "ema_update",
    "ema_update_from_moments",
    "RHO1_MODES", "per_head_quantile", "rho1_weights", "rho1_continuous_weights",
    "future_valid", "softmax_head_weights", "normalize_weights",
    "td_stats", "weight_stats", "explained_variance", "selection_ratio_per_head",
    "weight_histogram",
    "mean_response_value", "pairwise_accuracy", "auroc", "localization_hits", "weight_lift",
    "weight_entropy", "clipped_shares", "token_error_rates",
    "CONTROLS", "RENORMALIZE", "shuffled_weights", "lognormal_parameters",
    "matched_random_weights", "oracle_weights", "mean_one_scale", "check_options",
]
