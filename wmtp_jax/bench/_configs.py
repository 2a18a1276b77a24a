"""Run configs of the benchmarks, built without ``ml_collections`` (the device suite runs where it
is not installed): the sections an objective, ``training.state.build_state`` and
``training.step.compile_steps`` read, with the values of ``configs/*.py`` (``config.common``;
tests/test_bench_suite.py compares them), as ``Section`` dicts that read like a ``ConfigDict``.
"""

from typing import Any

from wmtp_jax.models import presets
from wmtp_jax.training import mesh as mesh_lib

# configs/verifiable.py's default scheme: GAE advantages → EMA-whitened exp weights.
WEIGHTING = dict(scheme="gae_exp", gamma=1.0, lam=0.95, initial_value=0.5, beta=1.0,
                 min_weight=0.1, max_weight=3.0, whitening="ema", ema_momentum=0.1, ema_warmup=10,
                 temperature=1.0, control="none", renormalize="none")


class Section(dict):
  """A dict whose keys also read as attributes (``config.train.grad_accum``), as code reads a
  ``ConfigDict``; nested dicts become sections."""

  def __init__(self, values=(), **more):
    super().__init__()
    for key, value in {**dict(values), **more}.items():
      self[key] = Section(value) if isinstance(value, dict) else value

  def __getattr__(self, name: str) -> Any:
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


def run_config(pipeline: str, size: str, model: dict, **sections: dict) -> Section:
  """The step-related sections of ``config.common.base(pipeline, size, model=model)`` (``size``:
  ``tiny`` | ``7b``); each of ``sections`` updates the section of its name (or adds it:
  ``critic``, ``weighting``)."""
  tiny = size == "tiny"
  config = dict(
      pipeline=pipeline, variant=size, seed=0, model=model, model_kind="mtp",
      init=dict(checkpoint=""),
      mesh=dict(shape=dict(data=-1, fsdp=1, tensor=1), preset=mesh_lib.DEFAULT_PRESET, rules=()),
      data=dict(samples="correct"),
      train=dict(grad_accum=1, trainable=".*" if tiny else "",
                 frozen_param_dtype="" if tiny else "bfloat16"),
      optim=dict(lr=3e-3 if tiny else 1e-4, min_lr_ratio=0.1 if tiny else 0.005,
                 warmup_steps=20 if tiny else 60, weight_decay=0.0 if tiny else 0.01, b1=0.9,
                 b2=0.95, eps=1e-8, grad_clip=1.0, groups={}),
      lora=dict(enabled=not tiny, settings=dict(
          rank=64, alpha=128.0, dropout=0.05,
          targets=("wq", "wk", "wv", "wo") + (() if tiny else ("w1", "w2", "w3")))),
      loss=dict(memory_efficient=not tiny, vocab_block=8192, token_block=1024))
  for name, values in sections.items():
    config[name] = {**config.get(name, {}), **values}
  return Section(config)


def mtp_model(size: str, **overrides: Any) -> dict:
  """The policy (``config.common.mtp_model``): MTP preset ``size`` in fp32 (``tiny``) or bf16
  compute, no remat, per-layer blocks, with ``overrides``."""
  return presets.mtp(size, dtype="float32" if size == "tiny" else "bfloat16", remat="none",
                     scan_layers=False, **overrides)


def critic_model(size: str, **overrides: Any) -> dict:
  """The critic of the ``verifiable`` runs (``configs/critic.py``'s model): the tiny LLaMA or
  (``7b``) Sheared-LLaMA-2.7B in bf16, with its MLP value head, and ``overrides``."""
  tiny = size == "tiny"
  name, dtype = ("tiny", {}) if tiny else ("sheared_llama_2.7b", {"dtype": "bfloat16"})
  return presets.llama(name, remat="none", scan_layers=False, value_head="mlp",
                       value_head_dropout=0.1 if tiny else 0.2,
                       value_head_bias_init=0.5 if tiny else 0.0, **{**dtype, **overrides})
