"""``experiment``: arms × seeds of the policy pipelines at equal FLOPs, with the control arms.

    python -m wmtp_jax.experiment --config=configs/experiment.py[:smoke|:ablation] --workdir=DIR

Default: baseline, verifiable, its three controls (shuffled, random_matched, oracle) and Rho-1,
3 seeds, every arm at the FLOPs verifiable spends in ``budget.steps`` steps (its critic forwards
included), evaluated on held-out problems (pass@k from samples, greedy pass@1). ``smoke``: 3 arms,
2 seeds, a few steps of smaller models and a few problems (the test suite runs it end to end).
``ablation``: baseline and verifiable with one-axis sweeps of β, GAE λ and the training horizon
``model.train_heads`` ∈ {1, 2, 4}. Fields: ``wmtp_jax.experiment.grid``. The config is locked.
"""

import ml_collections

CD = ml_collections.ConfigDict
VARIANTS = ("default", "smoke", "ablation")
# Every arm: a shorter held-out evaluation than a single run's, and interval pass@1 and
# validation loss every 50 steps for the learning curves.
EVALUATION = (("evaluate.max_problems", 48), ("evaluate.n_samples", 5),
              ("evaluate.every_steps", 50), ("evaluate.interval_problems", 16),
              ("train.eval_every", 50))


def arm(pipeline: str, *overrides, options: str = "") -> CD:
  return CD(dict(pipeline=pipeline, options=options, overrides=tuple(overrides)))


def get_config(arg: str | None = None) -> CD:
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"configs/experiment.py: unknown variant {arg!r}; variants: {VARIANTS}")
  c = CD()
  c.name, c.variant, c.size = variant, arg or "", "tiny"
  c.seeds = (0, 1, 2)
  c.baseline_arm = "baseline"
  # ``flops_of`` (an arm): every arm gets that arm's FLOPs in ``steps`` steps; "": equal steps.
  # 200 steps: from random weights, 129 baseline steps (seed 0) reached a fine-tuned pass@1 of
  # only 0.03, too little signal to compare arms; from the tiny bases 200 steps reach ~0.8
  # (README, "Experiments": the measured wall time, 1 h 06 m on 2 cores).
  c.budget = CD(dict(steps=200, flops_of="verifiable"))
  c.bootstrap = CD(dict(samples=10000, seed=0))
  c.overrides = EVALUATION
  c.sweeps = ()
  control = lambda name: arm("verifiable", ("weighting.control", name))
  c.arms = CD({"baseline": arm("baseline"), "verifiable": arm("verifiable"),
               "verifiable+shuffled": control("shuffled"),
               "verifiable+random_matched": control("random_matched"),
               "verifiable+oracle": control("oracle"), "rho1": arm("rho1")})
  if variant == "smoke":
    _smoke(c)
  elif variant == "ablation":
    c.arms = CD({"baseline": arm("baseline"), "verifiable": arm("verifiable")})
    c.sweeps = (("weighting.beta", (0.5, 1.0, 2.0)), ("weighting.lam", (0.8, 0.95, 1.0)),
                ("model.train_heads", (1, 2, 4)))
  return c.lock()


def _smoke(c: CD) -> None:
  """Minutes on 2 cores: 3 arms, 2 seeds, 4 steps of narrow models from random weights (no base
  pre-training), 4 problems with 2 samples each, a 4-step critic."""
  c.seeds = (0, 1)
  c.budget.steps = 4
  c.bootstrap.samples = 200
  small = (("data.batch_size", 4), ("data.max_len", 160), ("data.bucket_lengths", (160,)),
           ("data.val_batches", 1), ("train.eval_every", 4), ("train.log_every", 1),
           ("train.peak_flops", 1e9), ("init.base", ""))
  model = (("model.dim", 32), ("model.n_layers", 3), ("model.n_heads", 2),
           ("model.n_kv_heads", 1), ("model.n_future_tokens", 2), ("model.max_seq_len", 160))
  llama = (("hidden_size", 32), ("intermediate_size", 64), ("num_hidden_layers", 2),
           ("num_attention_heads", 2), ("num_key_value_heads", 1),
           ("max_position_embeddings", 160))
  critic = (*((f"critic.run.{k}", v) for k, v in small), ("critic.run.train.steps", 4),
            *((f"critic.run.model.{k}", v) for k, v in llama),
            *((f"critic.model.{k}", v) for k, v in llama))
  c.overrides = small + model + (
      ("evaluate.max_problems", 4), ("evaluate.n_samples", 2), ("evaluate.ks", (1, 2)),
      ("evaluate.max_new_tokens", 32), ("evaluate.every_steps", 2),
      ("evaluate.interval_problems", 4))
  c.arms = CD({"baseline": arm("baseline"), "verifiable": arm("verifiable", *critic),
               "verifiable+shuffled": arm("verifiable", ("weighting.control", "shuffled"),
                                          *critic)})
