"""``baseline``: the policy on correct solutions with all weights 1 (the control group).

``PolicyObjective`` is the policy of every weighted pipeline. ``config.model_kind`` chooses it:
``mtp`` (``MTPTransformer``, ``n = n_future_tokens`` heads, or ``config.model.train_heads``) or
``llama`` (``LlamaForCausalLM``: weighted next-token prediction on any HF LLaMA, ``n = 1``; tied
input/output embeddings included). Both give the same per-term CE ``[B, S, n]`` to the weighting.
"""

from wmtp_jax.checkpoints import pretrained
from wmtp_jax.models import llama, presets
from wmtp_jax.objectives import base

POLICY_KINDS = ("mtp", "llama")  # ``pretrained.KINDS`` of a policy: MTP or a plain LLaMA


class PolicyObjective(base.Objective):
  """The policy trained with the weighted MTP loss (``n = 1``: the weighted next-token loss);
  subclasses choose the weights."""

  def __init__(self, config):
    super().__init__(config)
    if config.model_kind not in POLICY_KINDS:
      raise ValueError(f"config.model_kind={config.model_kind!r}: expected one of {POLICY_KINDS}")
    config_cls, model_cls = pretrained.KINDS[config.model_kind]
    self.policy_cfg = presets.build(config_cls, config.model, where="config.model")
    self.model = model_cls(self.policy_cfg)
    self.multi_head = config.model_kind == "mtp"
    if self.multi_head:
      self.n = self.policy_cfg.train_heads or self.policy_cfg.n_future_tokens  # heads trained
      self.unembedding = lambda params: params["output"]["kernel"]
    else:
      self.n, self.unembedding = 1, llama.unembedding_DxV

  def normalizers(self, batch):
    return {"n_valid": base.n_valid_per_head(batch, self.n)}

  def policy_terms(self, params, apply, batch, **model_kwargs):
    """``(ce [B, S, n], valid [B, S, n], *extra model outputs)`` (``base.lm_terms``) of the
    first ``n = config.model.train_heads`` heads (the others are not run)."""
    if self.multi_head and self.n < self.policy_cfg.n_future_tokens:
      model_kwargs["heads"] = self.n
    return base.lm_terms(apply, params, batch, unembedding=self.unembedding, n=self.n,
                         loss_cfg=self.config.loss, multi_head=self.multi_head, **model_kwargs)


class Baseline(PolicyObjective):
  name = "baseline"

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    spans = "critical_mask" in batch  # synthetic data: the token error rates on the spans
    ce_BxSxn, valid_BxSxn, *extra = self.policy_terms(params, apply, batch, predictions=spans)
    loss, metrics = base.weighted_ce(ce_BxSxn, valid_BxSxn, None, norms)
    if spans:  # the uniform arm's critical vs other error rates, as the weighted arms log them
      metrics.update(base.span_error_rates(extra[0], batch))
    return loss, (metrics, {})
