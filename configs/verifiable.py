"""``verifiable``: WMTP with token weights from a value model's TD errors.

    python -m wmtp_jax.main --config=configs/verifiable.py[:SIZE[,OPTION…]] [--config.a.b=v …]

Sizes: ``tiny`` (default: synthetic task, CPU minutes) and ``7b`` (production settings; set
``--config.init.checkpoint`` and ``--config.data.dir``). Options after the size, comma-separated:
``ntp`` (a plain LLaMA policy, weighted next-token prediction; ``common.policy_base``),
``softmax_heads`` (per-position softmax over heads of TD errors instead of exp-weighted GAE
advantages) and ``shared_head`` (values from a head on the policy trunk instead of a separate
critic: its stage 1, head-only pre-training for ``shared_head.pretrain_epochs``
(``common.shared_head_pretraining``), runs first into WORKDIR/shared_head unless
``--config.shared_head.checkpoint`` is set; stage 2 adds ``value_coef``·clipped value loss).
Without ``shared_head`` the critic is ``configs/critic.py`` at the same size, trained first into
WORKDIR/critic unless ``--config.critic.checkpoint`` is set. The config is locked: a typo is an
error. All fields: configs/verifiable.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common

CD = ml_collections.ConfigDict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, options = common.parse_variant(arg, "verifiable", ("shared_head", "softmax_heads", "ntp"))
  shared_head = "shared_head" in options
  if "ntp" in options and options & {"shared_head", "softmax_heads"}:
    raise ValueError(f"configs/verifiable.py: option ntp (one head, no MTP trunk) does not combine "
                     f"with {sorted(options & {'shared_head', 'softmax_heads'})}")
  value_head = (dict(value_head="mlp", value_head_dropout=0.0, value_head_bias_init=0.5)
                if shared_head else {})  # values from a head on the policy trunk
  c = common.policy_base("verifiable", size, options, steps=300 if size == "tiny" else 2000,
                         **value_head)
  c.weighting = CD(dict(scheme="softmax_heads" if "softmax_heads" in options else "gae_exp",
                        gamma=1.0, lam=0.95, initial_value=0.5, beta=1.0, min_weight=0.1,
                        max_weight=3.0, whitening="ema", ema_momentum=0.1, ema_warmup=10,
                        temperature=1.0, control="none", renormalize="none"))
  if shared_head:  # trained on correct and incorrect samples; the policy run starts from stage 1
    c.data.samples = "all"
    c.train.trainable = "value_head/.*" if c.lora.enabled else ".*"  # LoRA trains the rest
    c.shared_head = CD(dict(stage="weighted", value_coef=0.5, clip_range=0.2, checkpoint="",
                            pretrain_epochs=0.25, pretrain_lr=1e-3))
  else:
    critic = common.frozen_run("critic", size, options)
    c.critic = CD(dict(model=critic.model.to_dict(), checkpoint="", run=critic))
  return c.lock()
