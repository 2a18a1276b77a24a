"""Export a params tree + config as a Hugging Face ``LlamaForCausalLM`` directory or as Meta's MTP
checkpoint (``python -m wmtp_jax.convert export-hf | export-meta``, whose docstring describes the
written files). The tensors are re-laid out by ``wmtp_jax.checkpoints.layouts`` one at a time.
"""

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import safetensors.torch
import torch
import transformers

from wmtp_jax.checkpoints import layouts, pretrained
from wmtp_jax.checkpoints.sources import new_dir, to_torch
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

EXTRA_HEADS_FILE = "extra_heads.safetensors"
# Fields of Meta's ``params.json`` (``max_seq_len`` and the numerics are ours, not Meta's).
META_PARAMS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
               "ffn_dim_multiplier", "norm_eps", "rope_theta", "n_future_tokens")


def _file_size(size: str) -> int:
  """``"5GB"`` → bytes (``KB``/``MB``/``GB`` are powers of 1000, ``KiB``/``MiB``/``GiB`` of
  1024)."""
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size)
  if not m:
    raise ValueError(f"max_shard_size={size!r}: expected e.g. '5GB', '500MiB' or a byte count")
  unit = m.group(2) or "B"
  scale = 1 if unit == "B" else (1024 if "i" in unit else 1000) ** ("KMG".index(unit[0]) + 1)
  return int(float(m.group(1)) * scale)


def _check_export(config, params: Mapping, where: str) -> None:
  shapes = (params.shapes() if isinstance(params, pretrained.LazyParams)
            else {p: np.shape(v) for p, v in params.items()})
  pretrained.check_params(config, shapes, where)


def _copy_tokenizer_files(tokenizer: str | Path | None, dst: Path) -> None:
  if tokenizer is not None:
    for name in pretrained.TOKENIZER_FILES:
      if (Path(tokenizer) / name).is_file():
        shutil.copyfile(Path(tokenizer) / name, dst / name)


def hf_config(config: MTPConfig | LlamaConfig, dtype: str) -> transformers.LlamaConfig:
  """The ``transformers.LlamaConfig`` of the exported ``LlamaForCausalLM`` (for an MTP model: the
  next-token path, ``n_layers − n_future + 1`` layers)."""
  b = config.block
  if isinstance(config, MTPConfig):
    n_layers, max_positions = config.n_trunk_layers + 1, config.max_seq_len
  else:
    n_layers, max_positions = config.num_hidden_layers, config.max_position_embeddings
  out = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=b.dim, intermediate_size=b.ffn_hidden,
      num_hidden_layers=n_layers, num_attention_heads=b.n_heads, num_key_value_heads=b.n_kv_heads,
      max_position_embeddings=max_positions, rms_norm_eps=b.norm_eps, rope_theta=b.rope_theta,
      hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
      dtype=dtype)
  out.architectures = ["LlamaForCausalLM"]
  return out


def export_hf(config: MTPConfig | LlamaConfig, params: Mapping, dst: str | Path, *,
              dtype: str, tokenizer: str | Path | None = None,
              max_shard_size: str = "5GB") -> dict:
  """Write a ``transformers`` ``LlamaForCausalLM`` directory (files: ``wmtp_jax.convert``).

  Args:
    config: the model config; ``params`` must match it exactly.
    params: flat mapping ``{Flax path: array}`` (``flax.traverse_util.flatten_dict`` of a params
      tree, or a ``pretrained.LazyParams``); leaves are read one at a time.
    dst: a new (or empty) directory.
    dtype: ``float32`` | ``bfloat16`` | ``float16`` of the written tensors.
    tokenizer: a tokenizer directory whose files are copied along.
    max_shard_size: e.g. ``"5GB"``: larger models are split into shards plus an index.
  """
  dst = Path(dst)
  _check_export(config, params, str(dst))
  if isinstance(config, MTPConfig):
    entries, extra = layouts.mtp_hf_entries(config)
  else:
    entries, extra = layouts.hf_entries(config), {}
  itemsize, limit = jnp.dtype(dtype).itemsize, _file_size(max_shard_size)
  shards: list[list[str]] = [[]]
  size = 0
  for key, entry in entries.items():
    nbytes = int(np.prod(entry.shape)) * itemsize
    if shards[-1] and size + nbytes > limit:
      shards.append([])
      size = 0
    shards[-1].append(key)
    size += nbytes
  names = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  with new_dir(dst):
    hf_config(config, dtype).save_pretrained(dst)
    tensors = layouts.flax_to_tensors(entries, params, config.block, dtype=jnp.dtype(dtype))
    for name, keys in zip(names, shards):
      shard = {key: to_torch(w) for key, w in (next(tensors) for _ in keys)}
      safetensors.torch.save_file(shard, dst / name, metadata={"format": "pt"})
    if len(shards) > 1:
      index = {"metadata": {"total_size": sum(int(np.prod(e.shape)) * itemsize
                                              for e in entries.values())},
               "weight_map": {k: n for n, keys in zip(names, shards) for k in keys}}
      (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if extra:
      heads = {k: to_torch(w) for k, w in layouts.flax_to_tensors(
          extra, params, config.block, dtype=jnp.dtype(dtype))}
      safetensors.torch.save_file(heads, dst / EXTRA_HEADS_FILE, metadata={
          "format": "pt", "n_future_tokens": str(config.n_future_tokens)})
    _copy_tokenizer_files(tokenizer, dst)
  return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "dtype": dtype}


def export_meta(config: MTPConfig, params: Mapping, dst: str | Path, *, dtype: str,
                tokenizer: str | Path | None = None) -> dict:
  """Write Meta's ``params.json`` + ``consolidated.pth`` (+ tokenizer files); arguments as in
  ``export_hf``. Only MTP models have Meta's layout."""
  dst = Path(dst)
  if not isinstance(config, MTPConfig):
    raise ValueError(f"export-meta writes Meta's MTP layout; this is a {type(config).__name__} "
                     f"model: use export-hf")
  _check_export(config, params, str(dst))
  entries = layouts.meta_entries(config)
  meta_params = {k: getattr(config, k) for k in META_PARAMS if getattr(config, k) is not None}
  with new_dir(dst):
    state_dict = {k: to_torch(w) for k, w in layouts.flax_to_tensors(
        entries, params, config.block, dtype=jnp.dtype(dtype))}
    torch.save(state_dict, dst / "consolidated.pth")
    del state_dict
    (dst / "params.json").write_text(json.dumps(meta_params, indent=2) + "\n")
    _copy_tokenizer_files(tokenizer, dst)
  return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "dtype": dtype}
