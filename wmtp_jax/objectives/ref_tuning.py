"""``ref_tuning``: next-token SFT of the reference LLaMA on correct solutions (for ``rho1``)."""

from wmtp_jax.models import llama, presets
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.objectives import base


class RefTuning(base.Objective):
  name = "ref_tuning"

  def __init__(self, config):
    super().__init__(config)
    self.model = LlamaForCausalLM(presets.build(LlamaConfig, config.model, where="config.model"))

  def normalizers(self, batch):
    return {"n_valid": base.n_valid_per_head(batch, 1)}

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    ce_BxSx1, valid_BxSx1 = base.lm_terms(apply, params, batch,
                                          unembedding=llama.unembedding_DxV, n=1,
                                          loss_cfg=self.config.loss, multi_head=False)
    loss, metrics = base.weighted_ce(ce_BxSx1, valid_BxSx1, None, norms)
    return loss, (metrics, {})
