"""``baseline``: the MTP policy on correct solutions with all weights 1 (the control group)."""

from wmtp_jax.models import presets
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer
from wmtp_jax.objectives import base


class PolicyObjective(base.Objective):
  """The MTP policy trained with the weighted MTP loss; subclasses choose the weights."""

  def __init__(self, config):
    super().__init__(config)
    self.policy_cfg = presets.build(MTPConfig, config.model, where="config.model")
    self.model = MTPTransformer(self.policy_cfg)
    self.n = self.policy_cfg.n_future_tokens

  def normalizers(self, batch):
    return {"n_valid": base.n_valid_per_head(batch, self.n)}

  def policy_terms(self, params, apply, batch, **model_kwargs):
    """``(ce [B, S, n], valid [B, S, n], *extra model outputs)`` (``base.lm_terms``)."""
    return base.lm_terms(apply, params, batch, unembedding=lambda p: p["output"]["kernel"],
                         n=self.n, loss_cfg=self.config.loss, multi_head=True, **model_kwargs)


class Baseline(PolicyObjective):
  name = "baseline"

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    ce_BxSxn, valid_BxSxn = self.policy_terms(params, apply, batch)
    loss, metrics = base.weighted_ce(ce_BxSxn, valid_BxSxn, None, norms)
    return loss, (metrics, {})
