"""Config files: variants build the right models, and a typo is an error."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.models import presets
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def n_params(model, seq=8):
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, seq), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


def test_7b_variant_is_meta_7b_1t_4():
  config = load_config("baseline", "7b")
  cfg = presets.build(MTPConfig, config.model, where="config.model")
  assert (cfg.n_trunk_layers, cfg.n_future_tokens, cfg.block.ffn_hidden) == (28, 4, 11008)
  # 2·V·D + D + 32 blocks · (4·D² + 3·D·F + 2·D), D = 4096, F = 11008, V = 32000.
  assert n_params(MTPTransformer(cfg)) == 6_738_415_616


def test_tiny_variant_runs_forward():
  config = load_config("baseline")
  cfg = presets.build(MTPConfig, config.model, where="config.model")
  model = MTPTransformer(cfg)
  tokens = jnp.zeros((2, 16), jnp.int32)
  logits = model.apply(model.init(jax.random.key(0), tokens), tokens)
  assert logits.shape == (2, 16, cfg.n_future_tokens, cfg.vocab_size)
  assert n_params(model) < 5_000_000


def test_sheared_llama_preset_size():
  cfg = LlamaConfig(**presets.llama("sheared_llama_2.7b"))
  assert cfg.block.head_dim == 128 and cfg.block.ffn_hidden == 6912


def test_config_typos_are_errors():
  config = load_config("baseline")
  with pytest.raises(AttributeError, match="dimm"):
    config.model.dimm = 3
  with pytest.raises(ValueError, match=r"config\.model: unknown MTPConfig key\(s\) \['dimm'\]"):
    presets.build(MTPConfig, {**config.model.to_dict(), "dimm": 3}, where="config.model")
  with pytest.raises(ValueError, match="unknown variant '7B'"):
    load_config("baseline", "7B")
  with pytest.raises(ValueError, match="unknown MTP preset 'huge'"):
    presets.mtp("huge")
