"""Export a params tree + config as a Hugging Face ``LlamaForCausalLM`` directory or as Meta's MTP
checkpoint (``python -m wmtp_jax.convert export-hf | export-meta``, whose docstring describes the
written files). The tensors are re-laid out by ``wmtp_jax.checkpoints.layouts`` one at a time.
"""

import dataclasses
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
from safetensors import safe_open

from wmtp_jax.checkpoints import layouts, pretrained
from wmtp_jax.checkpoints.sources import new_dir, to_torch
from wmtp_jax.data import tokenizer as tokenizer_lib
from wmtp_jax.models import layers, strict
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

EXTRA_HEADS_FILE = "extra_heads.safetensors"
# config.json's special token ids, from the exported tokenizer
SPECIAL_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
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


def _meta_params(config: MTPConfig) -> dict:
  """The fields of Meta's ``params.json`` (unset optional ones left out)."""
  return {k: getattr(config, k) for k in META_PARAMS if getattr(config, k) is not None}


def _check_export(config, params: Mapping, where: str) -> None:
  shapes = (params.shapes() if isinstance(params, pretrained.LazyParams)
            else {p: np.shape(v) for p, v in params.items()})
  pretrained.check_params(config, shapes, where)


def _copy_tokenizer_files(tokenizer: str | Path | None, dst: Path) -> None:
  if tokenizer is not None:
    for name in pretrained.TOKENIZER_FILES:
      if (Path(tokenizer) / name).is_file():
        shutil.copyfile(Path(tokenizer) / name, dst / name)


def hf_config(config: MTPConfig | LlamaConfig, dtype: str,
              tokenizer=None) -> transformers.LlamaConfig:
  """The ``transformers.LlamaConfig`` of the exported ``LlamaForCausalLM`` (for an MTP model: the
  next-token path, ``n_layers − n_future + 1`` layers), with the RoPE scaling and embedding tying
  of a ``LlamaConfig``, and the BOS / EOS / pad ids of ``tokenizer`` (a loaded tokenizer; without
  one, transformers' defaults 1 / 2 / none, LLaMA-2's: LLaMA-3's are 128000 / 128001, and
  generation in transformers stops at the config's EOS)."""
  b = config.block
  if isinstance(config, MTPConfig):
    n_layers, max_positions, tied = config.n_trunk_layers + 1, config.max_seq_len, False
  else:
    n_layers, max_positions = config.num_hidden_layers, config.max_position_embeddings
    tied = config.tie_word_embeddings
  scaling = None if b.rope_scaling is None else dataclasses.asdict(b.rope_scaling)
  out = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=b.dim, intermediate_size=b.ffn_hidden,
      num_hidden_layers=n_layers, num_attention_heads=b.n_heads, num_key_value_heads=b.n_kv_heads,
      max_position_embeddings=max_positions, rms_norm_eps=b.norm_eps, rope_theta=b.rope_theta,
      rope_scaling=scaling, hidden_act="silu", tie_word_embeddings=tied, attention_bias=False,
      mlp_bias=False, dtype=dtype,
      **({} if tokenizer is None else {k: getattr(tokenizer, k) for k in SPECIAL_TOKEN_IDS}))
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
    tok = None if tokenizer is None else tokenizer_lib.load_tokenizer(tokenizer)
    hf_config(config, dtype, tok).save_pretrained(dst)
    tensors = layouts.flax_to_tensors(entries, params, config.block, dtype=jnp.dtype(dtype))
    for name, keys in zip(names, shards):
      shard = {key: to_torch(w) for key, w in (next(tensors) for _ in keys)}
      safetensors.torch.save_file(shard, dst / name, metadata={"format": "pt"})
    if len(shards) > 1:
      index = {"metadata": {"total_size": sum(int(np.prod(e.shape)) * itemsize
                                              for e in entries.values())},
               "weight_map": {k: n for n, keys in zip(names, shards) for k in keys}}
      (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    if isinstance(config, MTPConfig):  # heads 1 … n−1 (none for n = 1) and the MTP fields
      heads = {k: to_torch(w) for k, w in layouts.flax_to_tensors(
          extra, params, config.block, dtype=jnp.dtype(dtype))}
      safetensors.torch.save_file(heads, dst / EXTRA_HEADS_FILE, metadata={
          "format": "pt", "n_future_tokens": str(config.n_future_tokens),
          "mtp_config": json.dumps(_meta_params(config))})
    _copy_tokenizer_files(tokenizer, dst)
  return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "dtype": dtype}


def _meta_ffn_fields(dim: int, ffn_hidden: int) -> dict:
  """Meta's ``multiple_of`` and ``ffn_dim_multiplier`` that give the SwiGLU width ``ffn_hidden``
  (``layers.meta_ffn_hidden``): ``multiple_of = ffn_hidden``, scaled down from ``8·dim/3`` by
  ``ffn_dim_multiplier`` where that is wider."""
  default = layers.meta_ffn_hidden(dim, 1, None)
  return {"multiple_of": ffn_hidden,
          "ffn_dim_multiplier": None if default <= ffn_hidden else ffn_hidden / default}


def exported_mtp_config(config: LlamaConfig, extra_heads: str | Path) -> MTPConfig:
  """The ``MTPConfig`` of an ``export_hf`` output of an MTP model: ``config`` is its
  ``config.json`` (the next-token path), ``extra_heads`` its ``EXTRA_HEADS_FILE``, whose metadata
  holds the MTP fields (``mtp_config``: those of Meta's ``params.json``). An export written before
  that field has ``n_future_tokens`` only: the other fields then come from ``config``, with the FFN
  width as ``multiple_of`` (the same model). Dtypes and ``max_seq_len`` come from ``config``;
  fields that disagree with it are an error naming both files."""
  extra_heads = Path(extra_heads)
  with safe_open(extra_heads, framework="pt") as f:
    metadata = f.metadata() or {}
  if "mtp_config" in metadata:
    fields = json.loads(metadata["mtp_config"])
  elif "n_future_tokens" in metadata:
    n_future, b = int(metadata["n_future_tokens"]), config.block
    fields = dict(dim=b.dim, n_layers=config.num_hidden_layers + n_future - 1, n_heads=b.n_heads,
                  n_kv_heads=b.n_kv_heads, vocab_size=config.vocab_size, norm_eps=b.norm_eps,
                  rope_theta=b.rope_theta, n_future_tokens=n_future,
                  **_meta_ffn_fields(b.dim, b.ffn_hidden))
  else:
    raise ValueError(f"{extra_heads}: no n_future_tokens in its metadata (export-hf writes it)")
  mtp = strict.from_dict(MTPConfig, {**fields, "max_seq_len": config.max_position_embeddings,
                                     "dtype": config.dtype, "param_dtype": config.param_dtype},
                         where=str(extra_heads))
  ours, theirs = dataclasses.asdict(mtp.block), dataclasses.asdict(config.block)
  ours.update(vocab_size=mtp.vocab_size, layers=mtp.n_trunk_layers + 1)
  theirs.update(vocab_size=config.vocab_size, layers=config.num_hidden_layers)
  differ = [f"{k}={ours[k]} (config.json: {theirs[k]})" for k in ours if ours[k] != theirs[k]]
  if differ:
    raise ValueError(f"{extra_heads}: the MTP model of its metadata ({', '.join(differ)}) does "
                     f"not match {extra_heads.parent / 'config.json'}")
  return mtp


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
  with new_dir(dst):
    state_dict = {k: to_torch(w) for k, w in layouts.flax_to_tensors(
        entries, params, config.block, dtype=jnp.dtype(dtype))}
    torch.save(state_dict, dst / "consolidated.pth")
    del state_dict
    (dst / "params.json").write_text(json.dumps(_meta_params(config), indent=2) + "\n")
    _copy_tokenizer_files(tokenizer, dst)
  return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "dtype": dtype}
