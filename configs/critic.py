"""``critic``: the value model (LLaMA + value head) trained on correct/incorrect solution pairs.

    python -m wmtp_jax.main --config=configs/critic.py[:7b] [--config.a.b=v …] [--workdir=DIR]

``tiny`` (default): synthetic task, CPU minutes. Its value model reads its own language model
(``model.value_inputs="hidden_logprob"``: ``V_t = head(h_t) + w·log p(x_t | x_<t)``,
``wmtp_jax.models.llama``) and learns that language model on the correct responses of its pairs
(``critic_loss.lm_coef``), beside the pairwise, λ-return and Monte-Carlo terms: a value head on
the hidden state alone stayed near chance on held-out pairs (README, "Critic diagnostics").
``7b``: the reference's critic (its ``critic_mlp_pairwise``): Sheared-LLaMA-2.7B, frozen
backbone + LoRA r32/α64 (dropout 0.1) on all seven linear layers at lr 2e-5, the MLP value head
(bias 0, dropout 0.2) at lr 1e-4, weight decay 0.01, pairwise loss only, cosine schedule with 5%
warm-up down to 0, best checkpoint by the validation margin; set ``--config.init.checkpoint``
and ``--config.data.dir``. The config is locked: a typo is an error. ``configs/verifiable.py``
runs this config first unless given a critic checkpoint. Held-out diagnostics
(``wmtp_jax.eval.critic``: pairwise accuracy over all pairs, AUROC, explained variance, hit@k) on
``evaluate.split`` every ``evaluate.every_steps`` steps and at the end. All fields:
configs/critic.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common

CD = ml_collections.ConfigDict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(arg, "critic")
  tiny = size == "tiny"
  model = common.llama_model(size, value_head="mlp", value_head_dropout=0.1 if tiny else 0.2,
                             value_head_bias_init=0.5 if tiny else 0.0,
                             value_inputs="hidden_logprob" if tiny else "hidden")
  steps = 400 if tiny else 1000
  c = common.base("critic", size, model=model, steps=steps, policy=False)
  c.data.sampler_args = CD(dict(max_pairs_per_problem=16 if tiny else 4,
                                length_bins=(0, 100, 150, 200, 300, 500, 1000, 2000)))
  c.critic_loss = CD(dict(pairwise_coef=1.0, lambda_coef=0.5 if tiny else 0.0,
                          mc_coef=0.5 if tiny else 0.0, value_loss="mse", huber_delta=0.5,
                          gamma=1.0, lam=0.95, lm_coef=1.0 if tiny else 0.0))
  # Held-out diagnostics (wmtp_jax.eval.critic): every record of the first max_problems problems
  # (0 = all) of the split, every (correct, incorrect) pair of a problem.
  c.evaluate.update(split="valid", max_problems=0 if tiny else 200,
                    every_steps=100 if tiny else 500)
  if not tiny:  # frozen backbone + LoRA; the value head trains at its own rate
    c.train.trainable = "value_head/.*"
    c.lora.settings.update(rank=32, alpha=64.0, dropout=0.1,
                           targets=("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    c.optim.update(lr=2e-5, weight_decay=0.01, warmup_steps=c.train.get_ref("steps") // 20,
                   min_lr_ratio=0.0,
                   groups=CD({"value_head": CD(dict(pattern="value_head/.*", lr=1e-4))}))
    c.checkpoint.update(best_metric="val_pairwise_margin", best_mode="max")
    c.data.update(common.reference_sampling("length_balanced_pairs", n_samples=200000,
                                            max_pairs_per_problem=60))
  return c.lock()
