"""The ``Objective`` interface and the pieces the policy objectives share.

Shapes follow the package legend (the ``wmtp_jax`` docstring); here ``E`` is the last axis of a
model output: ``V`` for logits, ``D`` for hidden states.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wmtp_jax import IGNORE_INDEX, losses, weighting
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


def response_mask(batch, prefix: str = ""):
  """``[B, S]`` bool: response tokens (``labels != -100``) that are not padding."""
  return (batch[prefix + "labels"] != IGNORE_INDEX) & (batch[prefix + "attention_mask"] != 0)


def n_valid_per_head(batch, n: int):
  """``[n]`` int32 count of valid targets per head over the whole batch (the CE denominators)."""
  _, valid_BxSxn = losses.mtp_targets(batch["labels"], batch["attention_mask"], n)
  return valid_BxSxn.sum(axis=(0, 1), dtype=jnp.int32)


def lm_terms(apply, params, batch, *, unembedding: Callable, n: int, loss_cfg, multi_head: bool,
             **model_kwargs):
  """Per-term cross-entropy of a language model on the batch's labels.

  ``multi_head``: the model returns ``[B, S, n, ·]`` (MTP) rather than ``[B, S, ·]`` (LLaMA, n=1).
  With ``loss_cfg.memory_efficient`` the model returns final-normed hidden states and the CE is
  computed blockwise against ``unembedding(params)``, the output projection ``[D, V]`` (never
  ``[B, S, n, V]``; e.g. ``llama.unembedding_DxV``, which also serves tied embeddings).
  ``model_kwargs`` that make the model return extra outputs (``return_values=True``) append them.

  Returns:
    ``(ce_BxSxn, valid_BxSxn, *extra outputs)``: float32 CE of head k at position t against
    ``x_{t+1+k}`` (0 where invalid) and the validity of each term.
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
  return ce_BxSxn, valid_BxSxn, *extra


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
