"""``critic``: the value model on correct (pos) / incorrect (neg) pairs (DESIGN §3).

``loss = pairwise_coef·L_pairwise + lambda_coef·L_λ + mc_coef·L_mc + lm_coef·L_lm``: Bradley–Terry
ranking of the mean response value of pos over neg; MSE/Huber against λ-returns (terminal reward 1
for pos, 0 for neg, targets without gradient), per-sequence means, ``(L_pos + L_neg) / 2`` as the
reference; Monte-Carlo MSE of every response value against the reward; and the next-token
cross-entropy of the pos (correct) responses, a token mean, for a value model that reads its own
language model's log-probabilities (``model.value_inputs="hidden_logprob"``,
``wmtp_jax.models.llama``): the critic learns what a correct solution looks like, and its value
sees where a response departs from it.

Each term is a mean (over pairs or rows); to make micro-batch accumulation equal one large batch,
a micro-batch's mean is scaled by its share of the step's count (``normalizers``).

Besides the losses, the metrics hold the reference's value diagnostics per side (``pos`` correct,
``neg`` incorrect; ``sequence_value_stats``): ``value_mean_<side>`` (mean response value),
``value_seq_variance_<side>`` (within-sequence variance: ≈ 0 means one value per sequence, no
token-level signal) and ``value_position_corr_<side>`` (correlation of value with position: near
±1 suggests a length effect rather than content).
"""

import jax
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
          "rows": mask.any(axis=1).sum(dtype=jnp.float32),
          "pos_tokens": base.response_mask(batch, "pos_").sum(dtype=jnp.float32)}


@jax.jit
def sequence_value_stats(values_BxS, mask_BxS) -> dict[str, jax.Array]:
  """The reference's per-sequence value diagnostics, averaged over rows (float32 scalars).

  ``mean``: of the per-row mean response value (rows with a response token); ``seq_variance``:
  of the per-row population variance of the values over the response; ``position_corr``: of the
  per-row Pearson correlation between value and position ``t`` over the response,
  ``Σ v'p' / (‖v'‖·‖p'‖ + 1e-8)`` with centred ``v'``, ``p'``, over rows with ≥ 3 response tokens
  (the reference's ``compute_position_correlation``). Each is 0 without a counted row.

  Args:
    values_BxS, mask_BxS: ``[B, S]`` values and response mask.
  """
  valid_BxS = jnp.asarray(mask_BxS) != 0
  v_BxS = jnp.where(valid_BxS, jnp.asarray(values_BxS, jnp.float32), 0.0)
  count_B = valid_BxS.sum(axis=1, dtype=jnp.float32)
  positions_BxS = jnp.where(valid_BxS, jnp.arange(v_BxS.shape[1], dtype=jnp.float32)[None, :],
                            0.0)
  centred = lambda x_BxS: jnp.where(
      valid_BxS, x_BxS - x_BxS.sum(axis=1, keepdims=True) / jnp.maximum(count_B, 1.0)[:, None], 0.0)
  dv_BxS, dp_BxS = centred(v_BxS), centred(positions_BxS)
  corr_B = (dv_BxS * dp_BxS).sum(axis=1) / (
      jnp.sqrt((dv_BxS**2).sum(axis=1)) * jnp.sqrt((dp_BxS**2).sum(axis=1)) + 1e-8)
  rows_mean = lambda x_B, rows_B: (jnp.where(rows_B, x_B, 0.0).sum()
                                   / jnp.maximum(rows_B.sum(), 1).astype(jnp.float32))
  has_B = count_B > 0
  return {"mean": rows_mean(v_BxS.sum(axis=1) / jnp.maximum(count_B, 1.0), has_B),
          "seq_variance": rows_mean((dv_BxS**2).sum(axis=1) / jnp.maximum(count_B, 1.0), has_B),
          "position_corr": rows_mean(corr_B, count_B >= 3)}


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
    if not (c.pairwise_coef or c.lambda_coef or c.mc_coef or c.lm_coef):
      raise ValueError("config.critic_loss: pairwise_coef, lambda_coef, mc_coef and lm_coef are "
                       "all 0")
    self.model = ValueModel(presets.build(LlamaConfig, config.model, where="config.model"))
    if c.lm_coef and self.model.cfg.value_inputs != "hidden_logprob":
      raise ValueError(f"config.critic_loss.lm_coef={c.lm_coef} needs a language-model head: "
                       f"config.model.value_inputs='hidden_logprob', not "
                       f"{self.model.cfg.value_inputs!r}")

  def normalizers(self, batch):
    return _counts(batch)

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    c = self.config.critic_loss
    tokens, attention_mask, mask, rewards = _stacked(batch)
    lm = self.model.cfg.value_inputs == "hidden_logprob"
    out = apply(params, tokens, attention_mask, deterministic=False, return_logprobs=lm,
                rngs={"dropout": rng})
    values, logp = out if lm else (out, None)
    b = batch["pos_tokens"].shape[0]
    share = {k: v / jnp.maximum(norms[k], 1.0) for k, v in _counts(batch).items()}

    pair = losses.pairwise_ranking_loss(values[:b], mask[:b], values[b:], mask[b:])
    returns = weighting.lambda_returns(values, rewards, mask, gamma=c.gamma, lam=c.lam)
    side_loss = lambda rows: losses.lambda_return_value_loss(
        values[rows], returns[rows], mask[rows], kind=c.value_loss, huber_delta=c.huber_delta)
    lam_loss = (side_loss(slice(None, b)) + side_loss(slice(b, None))) / 2
    mc_loss = losses.mc_value_loss(values, rewards, mask)
    # Next-token CE of the pos responses: logp[t] = log p(x_t | x_<t) on response tokens t.
    lm_loss = (-jnp.where(mask[:b], logp[:b], 0.0).sum()
               / jnp.maximum(mask[:b].sum(dtype=jnp.float32), 1.0)) if lm else jnp.float32(0.0)
    loss = (c.pairwise_coef * pair["loss"] * share["pairs"]
            + c.lambda_coef * lam_loss * share["pairs"] + c.mc_coef * mc_loss * share["rows"]
            + c.lm_coef * lm_loss * share["pos_tokens"])
    sides = {side: sequence_value_stats(values[rows], mask[rows])
             for side, rows in (("pos", slice(None, b)), ("neg", slice(b, None)))}
    metrics = {
        "loss": (c.pairwise_coef * pair["loss"] + c.lambda_coef * lam_loss + c.mc_coef * mc_loss
                 + c.lm_coef * lm_loss),
        "pairwise_loss": pair["loss"], "pairwise_accuracy": pair["accuracy"],
        "pairwise_margin": pair["margin"], "lambda_loss": lam_loss, "mc_loss": mc_loss,
        "lm_loss": lm_loss,
        "explained_variance": weighting.explained_variance(values, returns, mask),
        **{f"value_{k}": v for k, v in weighting.td_stats(values, mask).items()},
        **{f"value_{k}_{side}": v for side, stats in sides.items() for k, v in stats.items()},
    }
    return loss, (metrics, {})
