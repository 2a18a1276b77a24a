"""``verifiable``: token weights from a value function's advantages (DESIGN §3).

Per step: values ``V [B, S]`` (no gradient) → GAE advantages on the response → whitening with
the EMA statistics from *before* this step (or the batch's own, ``whitening="batch"``) →
``w = clip(exp(A_n/β), w_min, w_max)`` on the target tokens → weighted MTP loss. The EMA state is
then updated once from the masked moments of the whole step batch (all micro-batches, all devices).

``scheme="softmax_heads"`` instead scores each target by its TD error and weights the n terms of a
position by ``softmax_k(δ_{t+1+k} / temperature)`` (the original critic proposal).
``config.weighting.control`` replaces the weights by a control (``base.controlled_weights``: range
``[min_weight, max_weight]`` for ``gae_exp``, ``[0, 1]`` for ``softmax_heads``) and
``config.weighting.renormalize="mean1"`` rescales each step's weights to mean 1
(``base.mean_one``).
With ``config.data.samples = "all"`` incorrect solutions are trained on too, and the terminal TD
error uses the reward ``R`` (``is_correct``).

Where the values come from:
  * a frozen, separately trained critic (``config.critic``; the default), or
  * the **shared head** (``config.shared_head``): a value head on the policy's own final-normed
    trunk output (``MTPConfig.value_head``). Stage ``pretrain`` trains only that head with the
    Monte-Carlo MSE to ``R`` (a run of its own for a fraction of an epoch, before the policy run);
    stage ``weighted`` adds ``value_coef · L_value`` to the weighted loss, with PPO-style value
    clipping around ``V_old``: the values of the head as it was when this run started (kept in the
    carried state), on the current trunk output — the values "recorded when the data was scored".
"""

import jax
import jax.numpy as jnp

from wmtp_jax import losses, weighting
from wmtp_jax.models import presets
from wmtp_jax.models.llama import LlamaConfig, ValueHead, ValueModel
from wmtp_jax.objectives import base
from wmtp_jax.objectives.baseline import PolicyObjective

SCHEMES = ("gae_exp", "softmax_heads")
WHITENING = ("ema", "batch")
SHARED_HEAD_STAGES = ("pretrain", "weighted")


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
    self.shared = config.get("shared_head")
    base.check_weighting(w, shared_head=self.shared is not None)
    if self.shared is None:
      self.critic_cfg = presets.build(LlamaConfig, config.critic.model, where="config.critic.model")
      self.frozen_models = {"critic": ValueModel(self.critic_cfg)}
      return
    if self.shared.stage not in SHARED_HEAD_STAGES:
      raise ValueError(f"config.shared_head.stage={self.shared.stage!r}: expected one of "
                       f"{SHARED_HEAD_STAGES}")
    if not self.policy_cfg.value_head:
      raise ValueError("config.shared_head needs a value head on the policy: set "
                       "config.model.value_head (linear | sigmoid | mlp)")
    if self.samples != "all":
      raise ValueError(f"config.shared_head: the value head learns R from correct and incorrect "
                       f"samples; config.data.samples={self.samples!r} must be 'all'")
    self.frozen_models = {}
    self.value_head = ValueHead(self.policy_cfg.value_head, self.policy_cfg.value_head_dropout,
                                self.policy_cfg.value_head_bias_init)

  def init_aux(self, params):
    aux = {"ema": weighting.ema_init(), **base.control_aux(self.config.weighting)}
    if self.shared is not None and self.shared.stage == "weighted":
      aux["value_old"] = jax.tree_util.tree_map(jnp.copy, params["value_head"])  # own buffers
    return aux

  def normalizers(self, batch):
    mask_BxS = base.response_mask(batch)
    return {**super().normalizers(batch), "tokens": mask_BxS.sum(dtype=jnp.float32),
            "rows": mask_BxS.any(axis=1).sum(dtype=jnp.float32)}

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    if self.shared is not None and self.shared.stage == "pretrain":
      return self._pretrain_loss(params, apply, batch, norms, rng)
    w = self.config.weighting
    mask_BxS = base.response_mask(batch)
    rewards_B = batch["is_correct"] if self.samples == "all" else None
    spans = "critical_mask" in batch  # synthetic data: the token error rates on the spans
    if self.shared is None:
      values_BxS = self.frozen_models["critic"].apply(
          {"params": frozen["critic"]}, batch["tokens"], batch["attention_mask"])
      ce_BxSxn, valid_BxSxn, *extra = self.policy_terms(params, apply, batch, predictions=spans)
    else:
      ce_BxSxn, valid_BxSxn, trunk_BxSxD, values_BxS, *extra = self.policy_terms(
          params, apply, batch, predictions=spans, return_trunk_hidden=True, return_values=True,
          deterministic=False, rngs={"dropout": rng})
    scores_BxS, method_w = self._weights(jax.lax.stop_gradient(values_BxS), mask_BxS, rewards_B,
                                         aux)
    low, high = (w.min_weight, w.max_weight) if w.scheme == "gae_exp" else (0.0, 1.0)
    method_w, sums = base.controlled_weights(w, method_w, mask_BxS, batch, aux, rng, low=low,
                                             high=high)
    weights_BxSxn = losses.expand_weights(method_w, self.n)  # target-aligned → per term
    loss, metrics = base.weighted_ce(ce_BxSxn, valid_BxSxn, weights_BxSxn, norms)
    metrics.update(base.policy_weight_metrics(weights_BxSxn, valid_BxSxn, batch, low=low,
                                              high=high, hist_upper=high,
                                              mutated=self.samples == "all"))
    if spans:
      metrics.update(base.span_error_rates(extra[0], batch))
    metrics.update({f"advantage_{k}": v
                    for k, v in weighting.td_stats(scores_BxS, mask_BxS).items()})
    metrics.update({"value_mean": weighting.td_stats(values_BxS, mask_BxS)["mean"],
                    "ema_mean": aux["ema"].mean, "ema_std": aux["ema"].std})
    if self.shared is not None:
      old_BxS = self.value_head.apply({"params": aux["value_old"]},
                                      jax.lax.stop_gradient(trunk_BxSxD))
      returns_BxS = jnp.broadcast_to(rewards_B[:, None], mask_BxS.shape).astype(jnp.float32)
      value_loss = losses.clipped_value_loss(values_BxS, old_BxS, returns_BxS, mask_BxS,
                                             clip_range=self.shared.clip_range)
      share = mask_BxS.sum(dtype=jnp.float32) / jnp.maximum(norms["tokens"], 1.0)
      loss = loss + self.shared.value_coef * value_loss * share
      metrics.update({"value_loss": value_loss, "policy_loss": metrics["loss"],
                      "loss": metrics["loss"] + self.shared.value_coef * value_loss,
                      "explained_variance": weighting.explained_variance(values_BxS, returns_BxS,
                                                                         mask_BxS)})
    return loss, (metrics, {"moments": weighting.masked_moments(scores_BxS, mask_BxS), **sums,
                            **base.weight_sums(weights_BxSxn, valid_BxSxn)})

  def _weights(self, values_BxS, mask_BxS, rewards_B, aux):
    """``(scores [B, S], weights)``: GAE advantages → EMA-whitened exp weights ``[B, S]`` on the
    target tokens, or TD errors → per-position softmax over heads ``[B, S, n]``; constants for
    the gradient."""
    w = self.config.weighting
    if w.scheme == "gae_exp":
      scores_BxS = weighting.gae_advantages(values_BxS, mask_BxS, gamma=w.gamma, lam=w.lam,
                                            initial_value=w.initial_value, rewards=rewards_B)
      ema = aux["ema"] if w.whitening == "ema" else None
      weights_BxS = weighting.exp_weights(
          scores_BxS, mask_BxS, beta=w.beta, min_weight=w.min_weight, max_weight=w.max_weight,
          mean=None if ema is None else ema.mean, std=None if ema is None else ema.std)
      return scores_BxS, jax.lax.stop_gradient(weights_BxS)
    scores_BxS = weighting.td_errors(values_BxS, mask_BxS, gamma=w.gamma,
                                     initial_value=w.initial_value, rewards=rewards_B)
    weights_BxSxn = weighting.softmax_head_weights(scores_BxS, mask_BxS, self.n,
                                                   temperature=w.temperature)
    return scores_BxS, jax.lax.stop_gradient(weights_BxSxn)

  def _pretrain_loss(self, params, apply, batch, norms, rng):
    """Stage 1 of the shared head: Monte-Carlo MSE of ``V`` to ``R`` (only the head trains)."""
    _, values_BxS = apply(params, batch["tokens"], batch["attention_mask"], heads=1,
                          return_hidden=True, return_values=True, deterministic=False,
                          rngs={"dropout": rng})
    mask_BxS = base.response_mask(batch)
    rewards_B = batch["is_correct"].astype(jnp.float32)
    value_loss = losses.mc_value_loss(values_BxS, rewards_B, mask_BxS)
    share = mask_BxS.any(axis=1).sum(dtype=jnp.float32) / jnp.maximum(norms["rows"], 1.0)
    returns_BxS = jnp.broadcast_to(rewards_B[:, None], mask_BxS.shape)
    metrics = {"loss": value_loss, "value_mean": weighting.td_stats(values_BxS, mask_BxS)["mean"],
               "explained_variance": weighting.explained_variance(values_BxS, returns_BxS,
                                                                  mask_BxS)}
    return value_loss * share, (metrics, {})

  def update_aux(self, aux, aux_sums):
    if "moments" not in aux_sums:  # shared-head pre-training: no weights, no statistics
      return aux
    w = self.config.weighting
    aux = base.update_control_aux(w, aux, aux_sums)
    return {**aux, "ema": weighting.ema_update_from_moments(aux["ema"], aux_sums["moments"],
                                                            momentum=w.ema_momentum,
                                                            warmup_steps=w.ema_warmup)}

  def finish_step(self, loss, grads, metrics, aux_sums):
    return base.mean_one(self.config.weighting, loss, grads, metrics, aux_sums)
