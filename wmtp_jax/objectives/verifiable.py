"""``verifiable``: token weights from a frozen critic's advantages (DESIGN §3).

Per step: critic values ``V [B, S]`` (no gradient) → GAE advantages on the response → whitening with
the EMA statistics from *before* this step (or the batch's own, ``whitening="batch"``) →
``w = clip(exp(A_n/β), w_min, w_max)`` on the target tokens → weighted MTP loss. The EMA state is
then updated once from the masked moments of the whole step batch (all micro-batches, all devices).

``scheme="softmax_heads"`` instead scores each target by its TD error and weights the n terms of a
position by ``softmax_k(δ_{t+1+k} / temperature)`` (the original critic proposal).
With ``config.data.samples = "all"`` incorrect solutions are trained on too, and the terminal TD
error uses the reward ``R`` (``is_correct``).
"""

import jax

from wmtp_jax import losses, presets, weighting
from wmtp_jax.llama import LlamaConfig, ValueModel
from wmtp_jax.objectives import base
from wmtp_jax.objectives.baseline import PolicyObjective

SCHEMES = ("gae_exp", "softmax_heads")
WHITENING = ("ema", "batch")


class Verifiable(PolicyObjective):
  name = "verifiable"

  def __init__(self, config):
    super().__init__(config)
    w = config.weighting
    if w.scheme not in SCHEMES:
      raise ValueError(f"config.weighting.scheme={w.scheme!r}: expected one of {SCHEMES}")
    if w.whitening not in WHITENING:
      raise ValueError(f"config.weighting.whitening={w.whitening!r}: expected one of {WHITENING}")
    self.samples = config.data.samples
    self.critic_cfg = presets.build(LlamaConfig, config.critic.model, where="config.critic.model")
    self.frozen_models = {"critic": ValueModel(self.critic_cfg)}

  def init_aux(self):
    return {"ema": weighting.ema_init()}

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    w = self.config.weighting
    values_BxS = jax.lax.stop_gradient(self.frozen_models["critic"].apply(
        {"params": frozen["critic"]}, batch["tokens"], batch["attention_mask"]))
    mask_BxS = base.response_mask(batch)
    rewards_B = batch["is_correct"] if self.samples == "all" else None
    ce_BxSxN, valid_BxSxN = self.policy_terms(params, apply, batch)
    if w.scheme == "gae_exp":
      scores_BxS = weighting.gae_advantages(values_BxS, mask_BxS, gamma=w.gamma, lam=w.lam,
                                            initial_value=w.initial_value, rewards=rewards_B)
      ema = aux["ema"] if w.whitening == "ema" else None
      weights_BxS = weighting.exp_weights(
          scores_BxS, mask_BxS, beta=w.beta, min_weight=w.min_weight, max_weight=w.max_weight,
          mean=None if ema is None else ema.mean, std=None if ema is None else ema.std)
      weights_BxSxN = losses.expand_weights(weights_BxS, self.n)  # target-aligned → per term
    else:
      scores_BxS = weighting.td_errors(values_BxS, mask_BxS, gamma=w.gamma,
                                       initial_value=w.initial_value, rewards=rewards_B)
      weights_BxSxN = weighting.softmax_head_weights(scores_BxS, mask_BxS, self.n,
                                                     temperature=w.temperature)
    weights_BxSxN = jax.lax.stop_gradient(weights_BxSxN)
    loss, metrics = base.weighted_ce(ce_BxSxN, valid_BxSxN, weights_BxSxN, norms)
    metrics.update(base.term_weight_metrics(weights_BxSxN, valid_BxSxN))
    metrics.update({f"advantage_{k}": v for k, v in weighting.td_stats(scores_BxS, mask_BxS).items()})
    metrics.update({"value_mean": weighting.td_stats(values_BxS, mask_BxS)["mean"],
                    "ema_mean": aux["ema"].mean, "ema_std": aux["ema"].std})
    return loss, (metrics, {"moments": weighting.masked_moments(scores_BxS, mask_BxS)})

  def update_aux(self, aux, aux_sums):
    w = self.config.weighting
    return {"ema": weighting.ema_update_from_moments(aux["ema"], aux_sums["moments"],
                                                     momentum=w.ema_momentum,
                                                     warmup_steps=w.ema_warmup)}
