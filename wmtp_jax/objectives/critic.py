"""``critic``: the value model on correct (pos) / incorrect (neg) pairs (DESIGN §3).

``loss = pairwise_coef·L_pairwise + lambda_coef·L_λ + mc_coef·L_mc``: Bradley–Terry ranking of the
mean response value of pos over neg; MSE/Huber against λ-returns (terminal reward 1 for pos, 0 for
neg, targets without gradient); Monte-Carlo MSE of every response value against the reward.

Each term is a mean (over pairs, tokens or rows); to make micro-batch accumulation equal one large
batch, a micro-batch's mean is scaled by its share of the step's count (``normalizers``).
"""

import jax.numpy as jnp

from wmtp_jax import losses, weighting
from wmtp_jax.models import presets
from wmtp_jax.models.llama import LlamaConfig, ValueModel
from wmtp_jax.objectives import base

VALUE_LOSSES = ("mse", "huber")


def _stacked(batch):
  """pos rows then neg rows: ``tokens, attention_mask, mask [2B, S]`` and rewards ``[2B]``."""
  cat = lambda key: jnp.concatenate([batch["pos_" + key], batch["neg_" + key]], axis=0)
  mask = jnp.concatenate([base.response_mask(batch, "pos_"), base.response_mask(batch, "neg_")])
  b = batch["pos_tokens"].shape[0]
  rewards = jnp.concatenate([jnp.ones(b, jnp.float32), jnp.zeros(b, jnp.float32)])
  return cat("tokens"), cat("attention_mask"), mask, rewards


def _counts(batch):
  _, _, mask, _ = _stacked(batch)
  return {"pairs": jnp.float32(batch["pos_tokens"].shape[0]),
          "tokens": mask.sum(dtype=jnp.float32),
          "rows": mask.any(axis=1).sum(dtype=jnp.float32)}


class Critic(base.Objective):
  name = "critic"
  batch_kind = "pairs"
  samples = "pairs"

  def __init__(self, config):
    super().__init__(config)
    c = config.critic_loss
    if c.value_loss not in VALUE_LOSSES:
      raise ValueError(f"config.critic_loss.value_loss={c.value_loss!r}: expected one of "
                       f"{VALUE_LOSSES}")
    if not (c.pairwise_coef or c.lambda_coef or c.mc_coef):
      raise ValueError("config.critic_loss: pairwise_coef, lambda_coef and mc_coef are all 0")
    self.model = ValueModel(presets.build(LlamaConfig, config.model, where="config.model"))

  def normalizers(self, batch):
    return _counts(batch)

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    c = self.config.critic_loss
    tokens, attention_mask, mask, rewards = _stacked(batch)
    values = apply(params, tokens, attention_mask, deterministic=False, rngs={"dropout": rng})
    b = batch["pos_tokens"].shape[0]
    share = {k: v / jnp.maximum(norms[k], 1.0) for k, v in _counts(batch).items()}

    pair = losses.pairwise_ranking_loss(values[:b], mask[:b], values[b:], mask[b:])
    returns = weighting.lambda_returns(values, rewards, mask, gamma=c.gamma, lam=c.lam)
    lam_loss = losses.lambda_return_value_loss(values, returns, mask, kind=c.value_loss,
                                               huber_delta=c.huber_delta)
    mc_loss = losses.mc_value_loss(values, rewards, mask)
    loss = (c.pairwise_coef * pair["loss"] * share["pairs"]
            + c.lambda_coef * lam_loss * share["tokens"] + c.mc_coef * mc_loss * share["rows"])
    metrics = {
        "loss": (c.pairwise_coef * pair["loss"] + c.lambda_coef * lam_loss + c.mc_coef * mc_loss),
        "pairwise_loss": pair["loss"], "pairwise_accuracy": pair["accuracy"],
        "pairwise_margin": pair["margin"], "lambda_loss": lam_loss, "mc_loss": mc_loss,
        "explained_variance": weighting.explained_variance(values, returns, mask),
        **{f"value_{k}": v for k, v in weighting.td_stats(values, mask).items()},
    }
    return loss, (metrics, {})
