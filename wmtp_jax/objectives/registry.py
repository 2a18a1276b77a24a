"""``config.pipeline`` → its objective."""

from wmtp_jax.objectives.baseline import Baseline
from wmtp_jax.objectives.critic import Critic
from wmtp_jax.objectives.pretrain import Pretrain
from wmtp_jax.objectives.ref_tuning import RefTuning
from wmtp_jax.objectives.rho1 import Rho1
from wmtp_jax.objectives.verifiable import Verifiable

PIPELINES = {cls.name: cls for cls in (Baseline, Critic, Verifiable, Rho1, RefTuning, Pretrain)}


def build(config):
  if config.pipeline not in PIPELINES:
    raise ValueError(f"config.pipeline={config.pipeline!r}: expected one of {sorted(PIPELINES)}")
  return PIPELINES[config.pipeline](config)
