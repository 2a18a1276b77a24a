"""``critic``: the value model (LLaMA + value head) trained on correct/incorrect solution pairs.

    python -m wmtp_jax.main --config=configs/critic.py[:7b] [--config.a.b=v …] [--workdir=DIR]

``tiny`` (default): synthetic task, CPU minutes. ``7b``: production settings (Sheared-LLaMA-2.7B,
frozen backbone + LoRA); set ``--config.init.checkpoint`` and ``--config.data.dir``. The config is
locked: a typo is an error. ``configs/verifiable.py`` runs this config first unless given a critic
checkpoint. All fields: configs/critic.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common

CD = ml_collections.ConfigDict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(arg, "critic")
  tiny = size == "tiny"
  model = common.llama_model(size, value_head="mlp", value_head_dropout=0.1,
                             value_head_bias_init=0.5)
  c = common.base("critic", size, model=model, steps=150 if tiny else 1000, policy=False)
  c.data.sampler_args = CD(dict(max_pairs_per_problem=4, length_bins=(0, 100, 150, 200, 300, 500,
                                                                      1000, 2000)))
  c.critic_loss = CD(dict(pairwise_coef=1.0, lambda_coef=0.5, mc_coef=0.0, value_loss="mse",
                          huber_delta=0.5, gamma=1.0, lam=0.95))
  if not tiny:  # frozen backbone + LoRA; the value head trains at its own rate
    c.train.trainable = "value_head/.*"
    c.optim.groups = CD({"value_head": CD(dict(pattern="value_head/.*", lr=1e-4))})
    c.data.update(common.reference_sampling("length_balanced_pairs", n_samples=200000,
                                            max_pairs_per_problem=60))
  return c.lock()
