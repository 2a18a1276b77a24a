"""Baseline WMTP: the MTP policy fine-tuned with uniform weights on correct solutions.

Usage: ``--config=configs/baseline.py`` (tiny default) or ``--config=configs/baseline.py:7b``;
override any field with ``--config.model.dim=256``. The config is locked: a typo is an error.
"""

import ml_collections

from wmtp_jax import presets

VARIANTS = ("tiny", "7b")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "tiny"
  if variant not in VARIANTS:
    raise ValueError(f"configs/baseline.py: unknown variant {variant!r}; known: {VARIANTS}")
  config = ml_collections.ConfigDict()
  config.pipeline = "baseline"
  config.variant = variant
  config.model = presets.mtp(variant, dtype="float32" if variant == "tiny" else "bfloat16")
  config.loss = ml_collections.ConfigDict(dict(
      # Blockwise cross-entropy from the per-head hidden states: never materialises [B, S, n, V].
      memory_efficient=variant != "tiny",
  ))
  config.lock()
  return config
