"""``rho1``: token selection by excess loss over a frozen reference model (DESIGN §3, Lin et al.).

The reference is a next-token LLaMA: its CE at position ``t`` is against ``x_{t+1}``, so head ``k``
at position ``t`` (target ``x_{t+1+k}``) is compared with the reference CE at ``t+k``
(``weighting.rho1_weights`` does the alignment). ``variant="topk"`` keeps the top ``k_percent`` of
valid terms per head by excess (``mode`` ``signed`` | ``absolute`` | ``difficult``);
``variant="continuous"`` weights by ``|CE_ref − CE_policy|`` above a percentile plus α, normalised.
``config.weighting`` holds the control (``base.controlled_weights``, weight range ``[0, 1]`` for
top-k and ``[0, 3]``, ``normalize_weights``' bound, for the continuous variant) and the mean-1
renormalisation (``base.mean_one``).
"""

import jax

from wmtp_jax import weighting
from wmtp_jax.models import llama, presets
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.objectives import base
from wmtp_jax.objectives.baseline import PolicyObjective

VARIANTS = ("topk", "continuous")
HIST_UPPER = {"topk": 1.0, "continuous": 3.0}  # weights in {0, 1}; normalize_weights' max_weight:
# the upper end of the weight range (controls, clipped shares, histogram), whose lower end is 0


def method_weights(r, policy_ce_BxSxn, ref_ce_BxS, mask_BxS):
  """``[B, S, n]`` Rho-1 weights of the variant ``r = config.rho1`` names: top-k
  (``weighting.rho1_weights``) or continuous (``weighting.rho1_continuous_weights``), before any
  control."""
  if r.variant == "topk":
    return weighting.rho1_weights(policy_ce_BxSxn, ref_ce_BxS, mask_BxS, k_percent=r.k_percent,
                                  mode=r.mode, head0_always=r.head0_always)
  return weighting.rho1_continuous_weights(policy_ce_BxSxn, ref_ce_BxS, mask_BxS,
                                           percentile=r.percentile, alpha=r.alpha,
                                           normalize=r.normalize)


class Rho1(PolicyObjective):
  name = "rho1"

  def __init__(self, config):
    super().__init__(config)
    if config.rho1.variant not in VARIANTS:
      raise ValueError(f"config.rho1.variant={config.rho1.variant!r}: expected one of {VARIANTS}")
    if config.rho1.mode not in weighting.RHO1_MODES:
      raise ValueError(f"config.rho1.mode={config.rho1.mode!r}: expected one of "
                       f"{weighting.RHO1_MODES}")
    self.ref_cfg = presets.build(LlamaConfig, config.reference.model,
                                 where="config.reference.model")
    if self.ref_cfg.vocab_size != self.policy_cfg.vocab_size:
      raise ValueError(f"config.reference.model.vocab_size={self.ref_cfg.vocab_size} differs from "
                       f"config.model.vocab_size={self.policy_cfg.vocab_size}")
    base.check_weighting(config.weighting)
    self.frozen_models = {"reference": LlamaForCausalLM(self.ref_cfg)}

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    r = self.config.rho1
    reference = self.frozen_models["reference"]
    ref_apply = lambda p, *args, **kw: reference.apply({"params": p}, *args, **kw)
    ref_ce_BxSx1, _ = base.lm_terms(ref_apply, frozen["reference"], batch,
                                    unembedding=llama.unembedding_DxV, n=1,
                                    loss_cfg=self.config.loss, multi_head=False)
    ref_ce_BxS = jax.lax.stop_gradient(ref_ce_BxSx1[..., 0])
    spans = "critical_mask" in batch  # synthetic data: the token error rates on the spans
    ce_BxSxn, valid_BxSxn, *predictions = self.policy_terms(params, apply, batch,
                                                             predictions=spans)
    policy_ce_BxSxn = jax.lax.stop_gradient(ce_BxSxn)
    mask_BxS = base.response_mask(batch)
    weights_BxSxn = method_weights(r, policy_ce_BxSxn, ref_ce_BxS, mask_BxS)
    metrics = {"selection_ratio": weighting.selection_ratio_per_head(weights_BxSxn, valid_BxSxn)}
    high = HIST_UPPER[r.variant]
    weights_BxSxn, sums = base.controlled_weights(self.config.weighting, weights_BxSxn, mask_BxS,
                                                  batch, aux, rng, low=0.0, high=high)
    loss, ce_metrics = base.weighted_ce(ce_BxSxn, valid_BxSxn, weights_BxSxn, norms)
    metrics.update(ce_metrics)
    metrics.update(base.policy_weight_metrics(weights_BxSxn, valid_BxSxn, batch, low=0.0,
                                              high=high, hist_upper=high,
                                              mutated=self.samples == "all"))
    if spans:
      metrics.update(base.span_error_rates(predictions[0], batch))
    metrics["reference_ce"] = weighting.td_stats(ref_ce_BxS, mask_BxS)["mean"]
    return loss, (metrics, {**sums, **base.weight_sums(weights_BxSxn, valid_BxSxn)})

  def init_aux(self, params):
    return base.control_aux(self.config.weighting)

  def update_aux(self, aux, aux_sums):
    return base.update_control_aux(self.config.weighting, aux, aux_sums)

  def finish_step(self, loss, grads, metrics, aux_sums):
    return base.mean_one(self.config.weighting, loss, grads, metrics, aux_sums)
