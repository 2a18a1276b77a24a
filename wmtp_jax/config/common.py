"""Run configs of the pipelines (``configs/<pipeline>.py`` return these, locked).

``base(pipeline, variant)`` holds the sections every run has (model init, mesh, data, train,
optim, LoRA, loss, checkpoint); one function per pipeline adds its objective's section. Variants:
``tiny`` (the embedded default: tiny model, synthetic task, minutes on a laptop CPU) and ``7b``
(production settings: Meta 7B_1T_4 policy, Sheared-LLaMA-2.7B critic/reference, 2048 tokens,
LoRA r64) which needs only the checkpoint and data paths (``required`` lists them).
"""

import ml_collections

from wmtp_jax.training import mesh
from wmtp_jax.models import presets

VARIANTS = ("tiny", "7b")
POLICY_PIPELINES = ("baseline", "verifiable", "rho1")
CD = ml_collections.ConfigDict


def _variant(arg: str | None, pipeline: str, options: tuple[str, ...] = ()) -> tuple[str, set]:
  """``"7b,shared_head"`` → ``("7b", {"shared_head"})``: a size from ``VARIANTS`` (default tiny)
  and options of the pipeline, comma-separated in any order."""
  parts = [p for p in (arg or "").split(",") if p]
  sizes = [p for p in parts if p in VARIANTS]
  unknown = [p for p in parts if p not in VARIANTS and p not in options]
  if unknown or len(sizes) > 1:
    raise ValueError(f"configs/{pipeline}.py: unknown variant {arg!r}; sizes: {VARIANTS}, "
                     f"options: {options}")
  return (sizes or ["tiny"])[0], set(parts) - set(sizes)


def check_required(config) -> None:
  """Every dotted key in ``config.required`` must be set (e.g. checkpoint paths of the 7b runs)."""
  for key in config.required:
    node = config
    for part in key.split("."):
      node = node[part]
    if not node:
      raise ValueError(f"config.{key} is required for variant {config.variant!r} "
                       f"(pass --config.{key}=...)")


def base(pipeline: str, variant: str) -> CD:
  tiny = variant == "tiny"
  c = CD()
  c.pipeline, c.variant, c.seed = pipeline, variant, 0
  c.required = () if tiny else ("init.checkpoint", "data.dir")  # must be non-empty to start
  # ``remat``: none | full | dots_saveable | … (``layers.REMAT_POLICIES``), a memory lever.
  # ``scan_layers``: the trunk as one nn.scan loop (compile time ~independent of depth; pair with
  # remat; checkpoints stay per-layer; not with LoRA).
  c.model = presets.mtp(variant, dtype="float32" if tiny else "bfloat16", remat="none",
                        scan_layers=False)
  c.init = CD(dict(checkpoint=""))  # converted checkpoint dir or a finished run's workdir
  # ``preset``: full_shard | shard_grad_op | no_shard; ``rules`` take priority over the preset's.
  c.mesh = CD(dict(shape=CD(dict(data=-1, fsdp=1, tensor=1)), preset=mesh.DEFAULT_PRESET,
                   rules=()))
  c.data = CD(dict(
      dir="", cache_dir="", tokenizer="", train_split="train", valid_split="valid",
      max_len=256 if tiny else 2048, batch_size=16 if tiny else 64, seed=0, workers=0,
      truncation="response", bucket_lengths=(64, 128, 256) if tiny else (512, 1024, 2048),
      sampler="", sampler_args=CD(), val_batches=4 if tiny else 16, samples="correct",
      synthetic=CD(dict(n_train=1000, n_valid=100, n_test=200, seed=0, vocab_size=512))))
  # ``epochs`` > 0 replaces ``steps`` by ceil(epochs · training examples / batch size).
  c.train = CD(dict(steps=400 if tiny else 2000, epochs=0.0, grad_accum=1, log_every=20, eval_every=200,
                    trainable=".*" if tiny else "", max_nonfinite_streak=10, peak_flops=0.0,
                    frozen_param_dtype="" if tiny else "bfloat16"))
  c.optim = CD(dict(lr=3e-3 if tiny else 1e-4, min_lr_ratio=0.1, warmup_steps=20 if tiny else 100,
                    weight_decay=0.0 if tiny else 0.01, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0,
                    groups=CD()))
  c.lora = CD(dict(enabled=not tiny, settings=CD(dict(
      rank=64, alpha=128.0, dropout=0.05, targets=("wq", "wk", "wv", "wo")))))
  c.loss = CD(dict(memory_efficient=not tiny, vocab_block=8192, token_block=1024))
  c.checkpoint = CD(dict(every_steps=200 if tiny else 500, keep=2, best_metric="val_loss",
                         best_mode="min"))
  # After training a policy (``enabled``): held-out pass@1 (greedy, sandbox-scored) of
  # ``max_problems`` next to the untrained model; during training: ``eval_pass_at_1`` of the first
  # ``interval_problems`` every ``every_steps`` steps (0 = never; ``wmtp_jax.eval.interval``).
  policy = pipeline in POLICY_PIPELINES
  c.evaluate = CD(dict(enabled=policy, split="test", max_problems=200, max_new_tokens=96,
                       batch_size=32, every_steps=(200 if tiny else 500) if policy else 0,
                       interval_problems=32))
  return c


def _llama(variant: str, **overrides) -> dict:
  if variant == "tiny":
    return presets.llama("tiny", remat="none", scan_layers=False, **overrides)
  return presets.llama("sheared_llama_2.7b", dtype="bfloat16", remat="none", scan_layers=False,
                       **overrides)


def baseline(arg: str | None = None) -> CD:
  c = base("baseline", _variant(arg, "baseline")[0])
  return c.lock()


def critic(arg: str | None = None) -> CD:
  variant = _variant(arg, "critic")[0]
  c = base("critic", variant)
  c.model = _llama(variant, value_head="mlp", value_head_dropout=0.1, value_head_bias_init=0.5)
  c.data.sampler_args = CD(dict(max_pairs_per_problem=4, length_bins=(0, 100, 150, 200, 300, 500,
                                                                      1000, 2000)))
  c.critic_loss = CD(dict(pairwise_coef=1.0, lambda_coef=0.5, mc_coef=0.0, value_loss="mse",
                          huber_delta=0.5, gamma=1.0, lam=0.95))
  c.train.steps = 150 if variant == "tiny" else 1000
  if variant != "tiny":  # frozen backbone + LoRA; the value head trains at its own rate
    c.train.trainable = "value_head/.*"
    c.optim.groups = CD({"value_head": CD(dict(pattern="value_head/.*", lr=1e-4))})
  return c.lock()


def verifiable(arg: str | None = None) -> CD:
  """Options: ``softmax_heads`` (per-position softmax over heads of TD errors instead of
  exp-weighted GAE advantages) and ``shared_head`` (values from a head on the policy trunk,
  pre-trained first, instead of a separate critic)."""
  variant, options = _variant(arg, "verifiable", ("shared_head", "softmax_heads"))
  c = base("verifiable", variant)
  c.variant = ",".join([variant, *sorted(options)])
  c.weighting = CD(dict(scheme="softmax_heads" if "softmax_heads" in options else "gae_exp",
                        gamma=1.0, lam=0.95, initial_value=0.5, beta=1.0, min_weight=0.1,
                        max_weight=3.0, whitening="ema", ema_momentum=0.1, ema_warmup=10,
                        temperature=1.0))
  if "shared_head" in options:
    return _shared_head(c).lock()
  critic_run = critic(variant)
  # The critic: trained first by the main job (into WORKDIR/critic) unless a checkpoint is given.
  c.critic = CD(dict(model=critic_run.model.to_dict(), checkpoint="", run=critic_run))
  return c.lock()


def _shared_head(c: CD) -> CD:
  """The shared-head variant of a verifiable config: a value head on the policy trunk, trained
  on correct and incorrect samples. Unless ``shared_head.checkpoint`` is given, the main job first
  pre-trains the head (``shared_head_pretraining``) into ``WORKDIR/shared_head`` and the policy
  run starts from that model."""
  c.model.update(value_head="mlp", value_head_dropout=0.0, value_head_bias_init=0.5)
  c.data.samples = "all"
  c.train.trainable = "value_head/.*" if c.lora.enabled else ".*"  # LoRA trains the rest
  c.shared_head = CD(dict(stage="weighted", value_coef=0.5, clip_range=0.2, checkpoint="",
                          pretrain_epochs=0.25, pretrain_lr=1e-3))
  return c


def shared_head_pretraining(config: CD) -> CD:
  """Stage 1 of a shared-head ``verifiable`` config: the same model, data and init, only
  ``value_head/…`` trains (no LoRA), for ``pretrain_epochs`` of an epoch at ``pretrain_lr``,
  on the Monte-Carlo MSE to ``R``; no evaluation."""
  s = config.shared_head
  stage = ml_collections.ConfigDict(config.to_dict())
  stage.shared_head.update(stage="pretrain", checkpoint="")
  stage.train.update(trainable="value_head/.*", epochs=s.pretrain_epochs)
  stage.lora.enabled = False
  stage.optim.update(lr=s.pretrain_lr, warmup_steps=0)
  stage.evaluate.update(enabled=False, every_steps=0)
  return stage.lock()


def rho1(arg: str | None = None) -> CD:
  variant = _variant(arg, "rho1")[0]
  c = base("rho1", variant)
  ref_run = ref_tuning(variant)
  c.reference = CD(dict(model=ref_run.model.to_dict(), checkpoint="", run=ref_run))
  c.rho1 = CD(dict(variant="topk", k_percent=0.6, mode="signed", head0_always=False,
                   percentile=40.0, alpha=1.0, normalize=True))
  return c.lock()


def ref_tuning(arg: str | None = None) -> CD:
  variant = _variant(arg, "ref_tuning")[0]
  c = base("ref_tuning", variant)
  c.model = _llama(variant)
  c.train.steps = 200 if variant == "tiny" else 1000
  return c.lock()
