"""``pretrain``: the tiny bases' language-model pre-training (``configs/pretrain.py``).

Plain cross-entropy on every target of the corpus's documents (``data.synthetic.corpus``: the
whole document and its EOS; the constant template header before it is context only), uniformly
weighted: ``config.model_kind`` ``mtp`` trains all ``n`` heads of the ``MTPTransformer`` (the
``baseline`` objective's loss), ``llama`` the next token of a ``LlamaForCausalLM`` (the
``ref_tuning`` objective's loss). Batches are single records, every record of the corpus.
"""

from wmtp_jax.objectives import base
from wmtp_jax.objectives.baseline import Baseline
from wmtp_jax.objectives.ref_tuning import RefTuning

LOSSES = {"mtp": Baseline, "llama": RefTuning}  # config.model_kind → the objective whose loss


class Pretrain(base.Objective):
  name = "pretrain"
  samples = "all"

  def __init__(self, config):
    super().__init__(config)
    if config.model_kind not in LOSSES:
      raise ValueError(f"config.model_kind={config.model_kind!r}: expected one of "
                       f"{sorted(LOSSES)}")
    self._lm = LOSSES[config.model_kind](config)
    self.model = self._lm.model

  def normalizers(self, batch):
    return self._lm.normalizers(batch)

  def loss(self, params, apply, frozen, batch, norms, aux, rng):
    return self._lm.loss(params, apply, frozen, batch, norms, aux, rng)
