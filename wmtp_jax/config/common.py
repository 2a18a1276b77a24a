"""The sections every run config shares, and ``load`` of ``configs/<pipeline>.py``.

A config file reads top to bottom: it parses its variant (``parse_variant``), takes the shared
sections (``base``: init, mesh, data, train, optim, LoRA, loss, checkpoint, evaluate) and writes
out its own settings (its model, its steps, its objective's section). Sizes: ``tiny`` (the
default: tiny model, synthetic task, minutes on a laptop CPU) and ``7b`` (production settings:
Meta 7B_1T_4 policy, Sheared-LLaMA-2.7B critic/reference, 2048 tokens, LoRA r64), which needs
only the checkpoint and data paths (``required`` lists them). Configs are locked: a typo is an
error.
"""

import importlib.util
import pathlib

import ml_collections

from wmtp_jax.data import reference_samplers
from wmtp_jax.models import presets
from wmtp_jax.training import mesh as mesh_lib

SIZES = ("tiny", "7b")
# The config files live in the repository next to the package (installed editable).
CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
CD = ml_collections.ConfigDict


def parse_variant(arg: str | None, pipeline: str,
                  options: tuple[str, ...] = ()) -> tuple[str, set[str]]:
  """``"7b,shared_head"`` → ``("7b", {"shared_head"})``: a size from ``SIZES`` (default tiny)
  and options of the pipeline, comma-separated in any order; anything else is an error naming
  ``configs/<pipeline>.py``."""
  parts = [p for p in (arg or "").split(",") if p]
  sizes = [p for p in parts if p in SIZES]
  unknown = [p for p in parts if p not in SIZES and p not in options]
  if unknown or len(sizes) > 1:
    raise ValueError(f"configs/{pipeline}.py: unknown variant {arg!r}; sizes: {SIZES}, "
                     f"options: {options}")
  return (sizes or ["tiny"])[0], set(parts) - set(sizes)


def mtp_model(size: str, **overrides) -> dict:
  """The policy: MTP preset ``size`` (``7b``: Meta's 7B_1T_4) with ``overrides``.

  ``remat``: none | full | dots_saveable | … (``layers.REMAT_POLICIES``), a memory lever.
  ``scan_layers``: the trunk as one nn.scan loop (compile time ~independent of depth; pair with
  remat; checkpoints stay per-layer; not with LoRA). ``train_heads``: train and weight only the
  first n′ heads (0 = all; the horizon ablation).
  """
  return presets.mtp(size, dtype="float32" if size == "tiny" else "bfloat16", remat="none",
                     scan_layers=False, train_heads=0, **overrides)


def llama_model(size: str, **overrides) -> dict:
  """A critic / reference backbone: the tiny LLaMA or (``7b``) Sheared-LLaMA-2.7B in bf16."""
  if size == "tiny":
    return presets.llama("tiny", remat="none", scan_layers=False, **overrides)
  return presets.llama("sheared_llama_2.7b", dtype="bfloat16", remat="none", scan_layers=False,
                       **overrides)


def mesh() -> CD:
  """The device mesh: axis sizes (one ``-1`` takes the remaining devices); ``preset``:
  full_shard | shard_grad_op | no_shard; ``rules`` take priority over the preset's."""
  return CD(dict(shape=CD(dict(data=-1, fsdp=1, tensor=1)), preset=mesh_lib.DEFAULT_PRESET,
                 rules=()))


def base(pipeline: str, size: str, *, model: dict, steps: int, policy: bool) -> CD:
  """The sections of a training run of ``pipeline`` at ``size`` (unlocked): ``model`` (a preset
  dict), ``steps`` training steps; a ``policy`` run is evaluated (pass@1) during and after
  training."""
  tiny = size == "tiny"
  c = CD()
  c.pipeline, c.variant, c.seed = pipeline, size, 0
  c.required = () if tiny else ("init.checkpoint", "data.dir")  # must be non-empty to start
  c.model = model
  # ``checkpoint``: a converted checkpoint dir or a finished run's workdir. ``base`` (used when
  # ``checkpoint`` is empty): "" (random init) | "mtp" | "llama", the tiny pretrained base of that
  # kind (configs/pretrain.py, built once into the cache: ``training.bases``); tiny runs start
  # from the base of their model's kind, as the 7b runs start from converted checkpoints.
  c.init = CD(dict(checkpoint="", base=("mtp" if "n_future_tokens" in model else "llama")
                   if tiny else ""))
  c.mesh = mesh()
  c.data = CD(dict(
      dir="", cache_dir="", tokenizer="", train_split="train", valid_split="valid",
      max_len=256 if tiny else 2048, batch_size=16 if tiny else 64, seed=0, workers=0,
      truncation="response", bucket_lengths=(64, 128, 256) if tiny else (512, 1024, 2048),
      sampler="", sampler_args=CD(), val_batches=4 if tiny else 16, samples="correct",
      synthetic=CD(dict(n_train=1000, n_valid=100, n_test=200, seed=0, vocab_size=512)),
      train_eos=True, reference_sampler_args=reference_sampler_args()))
  # ``data.sampler``: a ``samplers.METHODS`` name (empty: the objective's default); today's
  # samplers read ``sampler_args``, the reference's (``unique_correct``, ``unique_pairs``,
  # ``length_balanced_pairs``; the 7b defaults, ``reference_sampling``) read
  # ``reference_sampler_args`` (``samplers.method_args``), so either kind is one flag away.
  # ``data.train_eos``: rows end with a trained EOS (the default: generation stops where the
  # program ends, and the critic's terminal value sits on that EOS); False is the reference's
  # recipe (pad = EOS, padding labels ignored, so no EOS is ever learned; evaluation then stops
  # at the template's stop rules: ``wmtp_jax.eval.prompts``).
  # ``epochs`` > 0 replaces ``steps`` by ceil(epochs · training examples / batch size).
  c.train = CD(dict(steps=steps, epochs=0.0, grad_accum=1, log_every=20, eval_every=200,
                    trainable=".*" if tiny else "", max_nonfinite_streak=10, peak_flops=0.0,
                    frozen_param_dtype="" if tiny else "bfloat16"))
  # ``flops`` > 0 replaces ``steps`` by the steps that spend that many train FLOPs (trained model
  # forward + backward + frozen models' forwards, ``training.flops``): arms at equal FLOPs.
  c.budget = CD(dict(flops=0.0))
  c.optim = CD(dict(lr=3e-3 if tiny else 1e-4, min_lr_ratio=0.1, warmup_steps=20 if tiny else 100,
                    weight_decay=0.0 if tiny else 0.01, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0,
                    groups=CD()))
  c.lora = CD(dict(enabled=not tiny, settings=CD(dict(
      rank=64, alpha=128.0, dropout=0.05, targets=("wq", "wk", "wv", "wo")))))
  c.loss = CD(dict(memory_efficient=not tiny, vocab_block=8192, token_block=1024))
  c.checkpoint = CD(dict(every_steps=200 if tiny else 500, keep=2, best_metric="val_loss",
                         best_mode="min"))
  # After training a policy (``enabled``; ``wmtp_jax.eval.compare``): the base and the
  # fine-tuned model on the first ``max_problems`` (0 = all) ``split`` problems: pass@``ks`` from
  # ``n_samples`` samples at each of ``temperatures`` (top-p ``top_p``, the best pass@1 kept),
  # greedy pass@1 (``greedy``) and per-head accuracy (tiny: 32 problems, n 10, so that the README
  # main job stays within 10 minutes on 2 cores; raise ``max_problems`` for tighter estimates).
  # The base reads ``base_prompt_mode``'s prompts (tiny "finetuned": the fine-tuned model's
  # prompts, so that base vs fine-tuned is what fine-tuning adds on the same prompts; the tiny
  # bases know the task only as commented code, ``data.synthetic.corpus``; 7b "base": the raw
  # harness prompt).
  # ``max_new_tokens`` 0 = the benchmark's own; each program runs
  # ``timeout_s`` / ``memory_mb`` in the sandbox. 7b: the reference's protocol (n 20, T 0.2 and
  # 0.8, top-p 0.95, k 1 5 10 20, 5 s). During training: greedy ``eval_pass_at_1`` of the first
  # ``interval_problems`` every ``every_steps`` steps (0 = never; ``wmtp_jax.eval.interval``).
  c.evaluate = CD(dict(
      enabled=policy, split="test", max_problems=(32 if tiny else 0) if policy else 200,
      max_new_tokens=96 if tiny else 0, batch_size=32, n_samples=10 if tiny else 20,
      temperatures=(0.8,) if tiny else (0.2, 0.8), top_p=0.95,
      ks=(1, 5, 10) if tiny else (1, 5, 10, 20), greedy=True,
      base_prompt_mode="finetuned" if tiny else "base", timeout_s=5.0, memory_mb=1024,
      every_steps=(150 if tiny else 500) if policy else 0, interval_problems=32))
  return c


def reference_sampler_args(n_samples: int = 0, max_pairs_per_problem: int = 60) -> CD:
  """``data.reference_sampler_args``, the arguments of the reference's samplers
  (``wmtp_jax.data.reference_samplers``): ``n_samples`` (0 = every pair), at most
  ``max_pairs_per_problem`` pairs per problem (0 = no cap), the difficulty bins (1–25) and the
  17 response-length bin edges of ``length_balanced_pairs``."""
  return CD(dict(n_samples=n_samples, max_pairs_per_problem=max_pairs_per_problem,
                 difficulty_bins=reference_samplers.REFERENCE_DIFFICULTY,
                 length_bins=reference_samplers.REFERENCE_LENGTH_BINS))


def reference_sampling(sampler: str, *, n_samples: int, max_pairs_per_problem: int) -> dict:
  """``data`` fields of the reference's sampling, the ``7b`` default: ``unique_correct`` (the
  correct side of unique 1:1 pairs: the same training set for every method at one seed) or
  ``length_balanced_pairs`` (the critic's pairs, matched within the reference's 17
  response-length bins); problems with both correct and incorrect solutions and difficulty 1–25,
  at most ``max_pairs_per_problem`` pairs each. Today's samplers stay selectable
  (``--config.data.sampler=correct_only``, …: they read ``data.sampler_args``)."""
  return dict(sampler=sampler, reference_sampler_args=reference_sampler_args(
      n_samples, max_pairs_per_problem))


def policy_base(pipeline: str, size: str, options: set[str], *, steps: int,
                **mtp_overrides) -> CD:
  """``base`` of a policy pipeline (baseline, verifiable, rho1) at ``size`` (unlocked).

  The policy (``config.model_kind``) is the MTP preset ``size`` with ``mtp_overrides``, or with
  option ``ntp`` a plain LLaMA (``LlamaForCausalLM``, one head: weighted next-token prediction;
  tiny: the tiny LLaMA, 7b: LLaMA-3-8B in bf16). ``config.variant`` names the size and options
  (the run directory ``runs/<pipeline>-<variant>``). The best checkpoint is the one of the lowest
  unweighted validation CE (the weighted one differs between methods). ``7b``: the reference's
  policy recipe, LoRA on all seven linear layers, 3% warm-up and a minimum LR ratio of 0.005, and
  its training set (``reference_sampling``; not for ``shared_head``, which trains on every record).
  """
  ntp = "ntp" in options
  if ntp and mtp_overrides:
    raise ValueError(f"configs/{pipeline}.py: option ntp (a LLaMA policy) has no MTP fields "
                     f"{sorted(mtp_overrides)}")
  if not ntp:
    model = mtp_model(size, **mtp_overrides)
  elif size == "tiny":
    model = llama_model(size)
  else:
    model = presets.llama("llama3_8b", dtype="bfloat16", remat="none", scan_layers=False)
  c = base(pipeline, size, model=model, steps=steps, policy=True)
  c.variant = ",".join([size, *sorted(options)])
  c.model_kind = "llama" if ntp else "mtp"
  c.checkpoint.best_metric = "val_unweighted"
  if size == "7b":
    c.lora.settings.targets = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    c.optim.update(warmup_steps=round(0.03 * steps), min_lr_ratio=0.005)
    if "shared_head" not in options:
      c.data.update(reference_sampling("unique_correct", n_samples=200000,
                                       max_pairs_per_problem=60))
  return c


def frozen_run(name: str, size: str, options: set[str]) -> CD:
  """The run config of a policy's frozen model (``critic`` or ``ref_tuning``) at ``size``. It
  reads the policy's token ids, so for a ``7b`` ``ntp`` policy (LLaMA-3) its backbone is
  LLaMA-3.2-1B (LLaMA-3's tokenizer; tied embeddings) instead of Sheared-LLaMA-2.7B."""
  run = load(name, size)
  if size == "tiny" or "ntp" not in options:
    return run
  run.unlock()
  run.model.update(presets.llama("llama3.2_1b", dtype="bfloat16"))
  return run.lock()


def shared_head_pretraining(config: CD) -> CD:
  """Stage 1 of a shared-head ``verifiable`` config: the same model, data and init, only
  ``value_head/…`` trains (no LoRA), for ``pretrain_epochs`` of an epoch at ``pretrain_lr``,
  on the Monte-Carlo MSE to ``R``; no evaluation."""
  s = config.shared_head
  stage = CD(config.to_dict())
  stage.shared_head.update(stage="pretrain", checkpoint="")
  stage.train.update(trainable="value_head/.*", epochs=s.pretrain_epochs)
  stage.lora.enabled = False
  stage.optim.update(lr=s.pretrain_lr, warmup_steps=0)
  stage.evaluate.update(enabled=False, every_steps=0)
  return stage.lock()


def check_required(config) -> None:
  """Every dotted key in ``config.required`` must be set (e.g. checkpoint paths of the 7b runs)."""
  for key in config.required:
    node = config
    for part in key.split("."):
      node = node[part]
    if not node:
      raise ValueError(f"config.{key} is required for variant {config.variant!r} "
                       f"(pass --config.{key}=...)")


def load(name: str, arg: str | None = None) -> CD:
  """``get_config(arg)`` of ``configs/<name>.py`` in the repository (``arg``: the variant, as
  after the colon of ``--config=configs/<name>.py:<arg>``)."""
  path = CONFIGS_DIR / f"{name}.py"
  if not CONFIGS_DIR.is_dir():
    raise FileNotFoundError(f"{CONFIGS_DIR}: no configs folder; the config files are read from "
                            f"the repository (install it editable: pip install -e .)")
  if not path.is_file():
    known = sorted(p.stem for p in CONFIGS_DIR.glob("*.py"))
    raise FileNotFoundError(f"{path}: no such config file; known: {known}")
  spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
