"""The ``Objective`` interface and the pieces the policy objectives share.

Shapes follow the package legend (the ``wmtp_jax`` docstring); here ``E`` is the last axis of a
model output: ``V`` for logits, ``D`` for hidden states.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wmtp_jax import IGNORE_INDEX, losses, weighting
from wmtp_jax.losses import blockwise_ce
from wmtp_jax.training import metrics_log


class Objective:
  """One pipeline's objective (see the package docstring for the call protocol).

  Attributes:
    name: the pipeline name.
    model: the trained Flax module.
    frozen_models: ``{name: module}`` of frozen models whose params come in ``frozen``.
    batch_kind: ``"single"`` (``tokens``, ``labels``, ``attention_mask``, ``is_correct``) or
      ``"pairs"`` (the same keys prefixed ``pos_`` / ``neg_``).
    samples: which records the sampler draws: ``"correct"`` or ``"all"`` (or ``"pairs"``).
  """
  name: str = ""
  batch_kind: str = "single"
  samples: str = "correct"
  frozen_models: dict[str, nn.Module] = {}

  def __init__(self, config):
    self.config = config

  model: nn.Module

  def init_aux(self, params) -> Any:
    """Carried state (e.g. EMA statistics), saved in checkpoints; ``params`` are the trained
    model's initial parameters."""
    return {}

  def normalizers(self, batch) -> Any:
    """Denominators from the whole step batch (all micro-batches)."""
    return {}

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    raise NotImplementedError

  def update_aux(self, aux, aux_sums):
    return aux

  def finish_step(self, loss, grads, metrics, aux_sums):
    """``(loss, grads, metrics)`` of the whole step once its micro-batches are summed
    (``aux_sums``: their summed statistics), e.g. rescaled by a factor of the whole step.
    Default: unchanged."""
    return loss, grads, metrics


def response_mask(batch, prefix: str = ""):
  """``[B, S]`` bool: response tokens (``labels != -100``) that are not padding."""
  return (batch[prefix + "labels"] != IGNORE_INDEX) & (batch[prefix + "attention_mask"] != 0)


def n_valid_per_head(batch, n: int):
  """``[n]`` int32 count of valid targets per head over the whole batch (the CE denominators)."""
  _, valid_BxSxn = losses.mtp_targets(batch["labels"], batch["attention_mask"], n)
  return valid_BxSxn.sum(axis=(0, 1), dtype=jnp.int32)


def lm_terms(apply, params, batch, *, unembedding: Callable, n: int, loss_cfg, multi_head: bool,
             predictions: bool = False, **model_kwargs):
  """Per-term cross-entropy of a language model on the batch's labels.

  ``multi_head``: the model returns ``[B, S, n, ·]`` (MTP) rather than ``[B, S, ·]`` (LLaMA, n=1).
  With ``loss_cfg.memory_efficient`` the model returns final-normed hidden states and the CE is
  computed blockwise against ``unembedding(params)``, the output projection ``[D, V]`` (never
  ``[B, S, n, V]``; e.g. ``llama.unembedding_DxV``, which also serves tied embeddings).
  ``model_kwargs`` that make the model return extra outputs (``return_values=True``) append them.
  ``predictions``: also return the argmax token of every term, int32 ``[B, S, n]`` (no gradient;
  blockwise with ``memory_efficient``, ``blockwise_ce.blockwise_argmax``: one more pass over the
  unembedding), last.

  Returns:
    ``(ce_BxSxn, valid_BxSxn, *extra outputs[, predictions_BxSxn])``: float32 CE of head k at
    position t against ``x_{t+1+k}`` (0 where invalid) and the validity of each term.
  """
  out = apply(params, batch["tokens"], batch["attention_mask"],
              return_hidden=loss_cfg.memory_efficient, **model_kwargs)
  out, *extra = out if isinstance(out, tuple) else (out,)
  out_BxSxnxE = out if multi_head else out[:, :, None, :]
  targets_BxSxn, valid_BxSxn = losses.mtp_targets(batch["labels"], batch["attention_mask"], n)
  if loss_cfg.memory_efficient:
    ce_BxSxn = losses.hidden_token_ce(out_BxSxnxE, unembedding(params), targets_BxSxn,
                                      vocab_block=loss_cfg.vocab_block,
                                      token_block=loss_cfg.token_block)
  else:
    ce_BxSxn = losses.token_ce(out_BxSxnxE, targets_BxSxn)
  if not predictions:
    return ce_BxSxn, valid_BxSxn, *extra
  out_BxSxnxE = jax.lax.stop_gradient(out_BxSxnxE)
  if loss_cfg.memory_efficient:
    flat_MxD = out_BxSxnxE.reshape(-1, out_BxSxnxE.shape[-1])
    predictions_BxSxn = blockwise_ce.blockwise_argmax(
        flat_MxD, jax.lax.stop_gradient(unembedding(params)), vocab_block=loss_cfg.vocab_block,
        token_block=loss_cfg.token_block).reshape(targets_BxSxn.shape)
  else:
    predictions_BxSxn = jnp.argmax(out_BxSxnxE, axis=-1).astype(jnp.int32)
  return ce_BxSxn, valid_BxSxn, *extra, predictions_BxSxn


def weighted_ce(ce_BxSxn, valid_BxSxn, w_BxSxn, norms):
  """``(loss, metrics)`` of the weighted MTP loss on one micro-batch.

  The loss divides by the step's per-head counts ``norms["n_valid"]`` so that the micro-batch
  losses sum to the loss of the whole step batch; the metrics are this micro-batch's own values.
  """
  step = losses.reduce_per_head(ce_BxSxn, valid_BxSxn, w_BxSxn, n_valid_per_head=norms["n_valid"])
  local = losses.reduce_per_head(ce_BxSxn, valid_BxSxn, w_BxSxn)
  return step["loss"], {k: local[k] for k in ("loss", "unweighted", "per_head",
                                              "per_head_unweighted")}


def term_weight_metrics(w_BxSxn, valid_BxSxn, *, hist_upper) -> dict:
  """``weight_mean/std/min/max/entropy`` over valid (position, head) terms, and
  ``weight_histogram``: their bucket counts over ``[0, hist_upper]`` (``metrics_log.histogram``)."""
  stats = weighting.weight_stats(w_BxSxn, valid_BxSxn)
  return {**{f"weight_{k}": v for k, v in stats.items()},
          "weight_histogram": metrics_log.histogram(
              weighting.weight_histogram(w_BxSxn, valid_BxSxn, upper=hist_upper), hist_upper)}


# Weighted policies (verifiable, rho1): control weights, mean-1 renormalisation, diagnostics.
# The running moments of a method's own weights that ``random_matched`` draws with: the EMA of
# ``weighting.ema_update_from_moments`` with the whitening defaults of ``configs/verifiable.py``.
CONTROL_EMA = dict(momentum=0.1, warmup_steps=10)


def check_weighting(weighting_cfg, *, shared_head: bool = False) -> None:
  """``config.weighting.control`` / ``renormalize`` are known (``weighting.check_options``);
  ``mean1`` rescales the whole step's loss, so it does not combine with an added value loss."""
  weighting.check_options(weighting_cfg)
  if shared_head and weighting_cfg.renormalize == "mean1":
    raise ValueError("config.weighting.renormalize='mean1' rescales the whole step loss and "
                     "would rescale the shared head's value loss too: not supported with "
                     "config.shared_head")


def control_aux(weighting_cfg) -> dict:
  """Carried state of the control: ``control_ema`` (``EMAStats``) of the method's own weights
  for ``random_matched``, nothing otherwise."""
  return {"control_ema": weighting.ema_init()} if weighting_cfg.control == "random_matched" else {}


def update_control_aux(weighting_cfg, aux, aux_sums):
  """``aux`` with ``control_ema`` updated from the step's ``control_moments`` (summed over the
  micro-batches)."""
  if weighting_cfg.control != "random_matched":
    return aux
  return {**aux, "control_ema": weighting.ema_update_from_moments(
      aux["control_ema"], aux_sums["control_moments"], **CONTROL_EMA)}


def _masked_mean_std(moments):
  """Mean and (population) std of ``weighting.Moments``; 0 and 0 without a valid entry."""
  count = jnp.maximum(moments.count.astype(jnp.float32), 1.0)
  mean = moments.sum / count
  return mean, jnp.sqrt(jnp.maximum(moments.sumsq / count - jnp.square(mean), 0.0))


def controlled_weights(weighting_cfg, w, mask_BxS, batch, aux, rng, *, low, high):
  """``(weights, aux sums)``: the method's weights ``w`` or, per ``config.weighting.control``,
  their control (``weighting.controls``), of the same shape, constants for the gradient.

  ``w`` is target-aligned ``[B, S]`` (valid on ``mask_BxS``) or per term ``[B, S, n]`` (valid on
  ``future_valid(mask_BxS, n)``); ``[low, high]`` is the method's weight range (the clip range of
  ``random_matched``, the two values of ``oracle`` before scaling).
    * ``shuffled``: ``w`` permuted among each row's (and head's) valid targets;
    * ``random_matched``: LogNormal with the running mean and std of ``w`` (``aux["control_ema"]``
      before this step; the step's own moments at the first step), clipped to ``[low, high]``;
      the sums carry ``control_moments`` of ``w`` for the update;
    * ``oracle``: ``high`` on the ground-truth critical targets (``batch["critical_mask"]``,
      synthetic data only) and ``low`` elsewhere, scaled to the mean of ``w`` over its valid
      entries in this micro-batch.
  """
  control = weighting_cfg.control
  valid = mask_BxS if w.ndim == 2 else weighting.future_valid(mask_BxS, w.shape[2])
  key = jax.random.fold_in(rng, 0x636F6E74)  # a stream of its own ("cont"), not the dropout's
  if control == "none":
    return w, {}
  if control == "shuffled":
    return jax.lax.stop_gradient(weighting.shuffled_weights(key, w, mask_BxS)), {}
  moments = weighting.masked_moments(w, valid)
  mean, std = _masked_mean_std(moments)
  if control == "random_matched":
    ema = aux["control_ema"]
    mean = jnp.where(ema.count > 0, ema.mean, mean)
    std = jnp.where(ema.count > 0, ema.std, std)
    drawn = weighting.matched_random_weights(key, valid, mean=jnp.where(mean > 0.0, mean, 1.0),
                                             std=std, min_weight=low, max_weight=high)
    return drawn, {"control_moments": moments}
  if "critical_mask" not in batch:
    raise ValueError("config.weighting.control='oracle' needs the ground-truth critical spans of "
                     "the synthetic task (batch key critical_mask); this dataset has none")
  return weighting.oracle_weights(batch["critical_mask"], valid, mean=mean, low=low,
                                  high=high), {}


def policy_weight_metrics(w_BxSxn, valid_BxSxn, batch, *, low, high, hist_upper,
                          mutated: bool) -> dict:
  """``term_weight_metrics`` plus ``weight_clipped_min`` / ``weight_clipped_max`` (shares of the
  valid terms at ``low`` / ``high``, ``weighting.clipped_shares``) and, when the batch has the
  spans (synthetic data), ``weight_lift_critical`` and, if ``mutated`` (incorrect samples are
  trained on), ``weight_lift_mutated`` (``weighting.weight_lift``)."""
  metrics = term_weight_metrics(w_BxSxn, valid_BxSxn, hist_upper=hist_upper)
  shares = weighting.clipped_shares(w_BxSxn, valid_BxSxn, min_weight=low, max_weight=high)
  metrics.update(weight_clipped_min=shares["at_min"], weight_clipped_max=shares["at_max"])
  spans = [("critical", "critical_mask")] + ([("mutated", "mutated_mask")] if mutated else [])
  for name, key in spans:
    if key in batch:
      metrics[f"weight_lift_{name}"] = weighting.weight_lift(w_BxSxn, valid_BxSxn,
                                                             batch[key])["lift"]
  return metrics


def span_error_rates(predictions_BxSxn, batch) -> dict:
  """``error_rate_critical/head<k>`` and ``error_rate_other/head<k>``: per head, the share of
  wrong argmax predictions on critical and on other response targets
  (``weighting.token_error_rates``); ``{}`` without the spans (real data)."""
  if "critical_mask" not in batch:
    return {}
  rates = weighting.token_error_rates(predictions_BxSxn, batch["labels"],
                                      batch["attention_mask"], batch["critical_mask"])
  return {f"error_rate_{name}/head{k}": rates[f"{region}_error_n"][k]
          for name, region in (("critical", "region"), ("other", "other"))
          for k in range(predictions_BxSxn.shape[2])}


def weight_sums(w_BxSxn, valid_BxSxn) -> dict:
  """Aux sums for ``mean_one``: ``weight_moments`` of the final per-term weights."""
  return {"weight_moments": weighting.masked_moments(w_BxSxn, valid_BxSxn)}


def mean_one(weighting_cfg, loss, grads, metrics, aux_sums):
  """``finish_step`` of a weighted policy: with ``renormalize="mean1"`` the step's weights are
  rescaled to mean 1 over the valid terms of the whole step batch, ``c = N / Σw``
  (``weighting.mean_one_scale`` of the summed ``weight_moments``). The weights are constants and
  the loss is linear in them, so this multiplies the loss, its gradients and the weighted loss
  metrics by ``c`` (exact under gradient accumulation); ``weight_scale`` logs ``c``. The
  ``weight_*`` statistics stay those of the weights before the rescale."""
  if weighting_cfg.renormalize != "mean1" or "weight_moments" not in aux_sums:
    return loss, grads, metrics
  moments = aux_sums["weight_moments"]
  scale = weighting.mean_one_scale(moments.sum, moments.count)
  grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
  metrics = {**metrics, "loss": metrics["loss"] * scale, "per_head": metrics["per_head"] * scale,
             "weight_scale": scale}
  return loss * scale, grads, metrics
