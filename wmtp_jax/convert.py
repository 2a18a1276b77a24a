"""Convert Meta MTP and Hugging Face LLaMA checkpoints into converted directories, and export back.

    python -m wmtp_jax.convert meta --src DIR --dst DIR [--dtype bf16|fp32] [--tokenizer PATH]
    python -m wmtp_jax.convert hf   --src DIR --dst DIR [--dtype bf16|fp32] [--tokenizer PATH]
    python -m wmtp_jax.convert export-hf   --src CONVERTED_OR_WORKDIR --dst DIR [--dtype bf16|fp16|fp32]
                                           [--max_shard_size 5GB]
    python -m wmtp_jax.convert export-meta --src CONVERTED_OR_WORKDIR --dst DIR [--dtype bf16|fp16|fp32]

Sources:
  ``meta``: ``params.json`` + ``consolidated.pth`` (Meta's MTP release, e.g. ``7B_1T_4``) → an
    ``MTPTransformer`` tree (``kind: mtp``). The tokenizer is ``--tokenizer`` or the
    ``tokenizer.model`` in the directory or its parent (Meta's release layout).
  ``hf``: ``config.json`` + ``model.safetensors`` | sharded ``*.safetensors`` with
    ``model.safetensors.index.json`` | ``pytorch_model.bin`` (optionally sharded with
    ``pytorch_model.bin.index.json``) → a ``LlamaForCausalLM`` tree (``kind: llama``; the
    ``ValueModel`` backbone is its ``model`` subtree). The tokenizer files come from the same
    directory or ``--tokenizer``.
  ``--dtype`` is the stored parameter dtype (default fp32: exact for fp16/bf16/fp32 sources).
  The destination layout is described in ``wmtp_jax.checkpoints.pretrained``.

Exports (``--src`` a converted directory; ``--dtype`` defaults to the original checkpoint's):
  ``export-hf``: ``config.json`` + ``model.safetensors`` (or ``model-0000i-of-0000N.safetensors`` +
    ``model.safetensors.index.json`` beyond ``--max_shard_size``) of a ``LlamaForCausalLM`` that
    ``transformers`` loads, plus the tokenizer files. For an MTP model it is the next-token path
    (``n_layers − n_future + 1`` layers: trunk + head 0, shared norm and output) and
    ``extra_heads.safetensors`` holds heads 1 … n−1 as ``extra_heads.{k−1}.<block sub-key>`` in HF
    layout (``self_attn.q_proj.weight``, …, ``mlp.gate_proj.weight``, ``input_layernorm.weight``,
    …; see ``layouts.mtp_hf_entries``), with ``n_future_tokens`` in its metadata.
  ``export-meta``: ``params.json`` + ``consolidated.pth`` in Meta's layout (RoPE rows permuted back
    to interleaved) + the tokenizer files; MTP models only.

Everything is strict: missing, unexpected or wrongly shaped keys are errors listing the names
(``rotary_emb.inv_freq`` buffers are skipped), so is an ``n_future_tokens`` that does not match the
blocks present, and a tokenizer whose vocabulary exceeds the model's.

Host memory (measured by ``python -m wmtp_jax.bench convert``): the source is streamed one tensor
at a time: torch files through ``torch.load(mmap=True)`` with each tensor's pages released once it
is converted, safetensors through ``safe_open(backend="pread")``. Importing holds the converted
tree once (Orbax writes it in place, uncompressed): peak ≈ the converted size + one tensor + the
interpreter. ``export-hf`` reads one tensor at a time from Orbax and holds one output shard;
``export-meta`` holds the output state dict once (``torch.save`` needs it whole). Measured on a
1.06B-parameter MTP model (fp16 ``consolidated.pth`` of 2.0 GB, bf16 store, 2 CPUs): peak RSS
2.5 GB for ``meta`` and 2.7 GB for ``export-hf`` / ``export-meta``, of which 0.46 GB is the
interpreter with its imports, i.e. 1.03–1.10× the checkpoint size on top of that; a 7B model
(13.5 GB in fp16) thus converts in ≈ 15 GB.
"""

import argparse
import collections
import ctypes
import json
import mmap
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import safetensors.torch
import torch
import transformers
from safetensors import safe_open

from wmtp_jax.checkpoints import pretrained, layouts
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
EXTRA_HEADS_FILE = "extra_heads.safetensors"
# Fields of Meta's ``params.json`` (``max_seq_len`` and the numerics are ours, not Meta's).
META_PARAMS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
               "ffn_dim_multiplier", "norm_eps", "rope_theta", "n_future_tokens")
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_LIBC = ctypes.CDLL(None)
_LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


# ----------------------------------------------------------------------------------------------
# Reading and writing tensors.
# ----------------------------------------------------------------------------------------------
def to_numpy(t: torch.Tensor) -> np.ndarray:
  """A zero-copy numpy view of a CPU tensor; bfloat16 becomes ``ml_dtypes.bfloat16``."""
  t = t.detach()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(jnp.bfloat16)
  return t.numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
  """Inverse of ``to_numpy`` (zero-copy)."""
  if a.dtype == jnp.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def _drop_pages(t: torch.Tensor) -> None:
  """Release the resident pages of an mmap'd tensor (``madvise(MADV_DONTNEED)``) once it has been
  copied, so that streaming a file does not accumulate it in RSS. Safe on ``torch.load``'s private
  file mapping: pages touched again are re-read from the unchanged file."""
  storage = t.untyped_storage()
  start = -(-storage.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
  end = (storage.data_ptr() + storage.nbytes()) // mmap.PAGESIZE * mmap.PAGESIZE
  if end > start:
    _LIBC.madvise(start, end - start, mmap.MADV_DONTNEED)


def _torch_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
  state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  if not isinstance(state_dict, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in state_dict.values()):
    raise ValueError(f"{path}: expected a flat state dict of tensors")
  return state_dict


class TensorFiles:
  """Tensor-by-tensor reader over checkpoint files: torch zips (``.pth``, ``.bin``) through
  ``torch.load(mmap=True, weights_only=True)``, ``.safetensors`` through ``safe_open(backend=
  "pread")``. Iterating yields ``(key, numpy array)``: a view of the mapped file whose resident
  pages are released when the next tensor is requested (so copy it first; reading it later still
  works, from disk), or a fresh buffer read with ``pread``."""

  def __init__(self, files: list[Path]):
    self.files = files

  def specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype name)}`` of every tensor, without reading tensor data; a key stored
    in two files is an error."""
    specs, origin = {}, {}
    for file in self.files:
      if file.suffix == ".safetensors":
        with safe_open(file, framework="pt", backend="pread") as f:
          found = {k: (tuple(f.get_slice(k).get_shape()),
                       _SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(),
                                               f.get_slice(k).get_dtype()))
                   for k in f.keys()}
      else:
        found = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch."))
                 for k, t in _torch_state_dict(file).items()}
      twice = sorted(set(found) & set(specs))
      if twice:
        raise ValueError(f"{file}: keys {twice} are also in {origin[twice[0]]}")
      specs.update(found)
      origin.update(dict.fromkeys(found, file))
    return specs

  def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
    for file in self.files:
      if file.suffix == ".safetensors":
        with safe_open(file, framework="pt", backend="pread") as f:
          for key in f.keys():
            yield key, to_numpy(f.get_tensor(key))
      else:
        for key, t in _torch_state_dict(file).items():
          yield key, to_numpy(t)
          _drop_pages(t)


def _file_size(size: str) -> int:
  """``"5GB"`` → bytes (``KB``/``MB``/``GB`` are powers of 1000, ``KiB``/``MiB``/``GiB`` of 1024)."""
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size)
  if not m:
    raise ValueError(f"max_shard_size={size!r}: expected e.g. '5GB', '500MiB' or a byte count")
  unit = m.group(2) or "B"
  scale = 1 if unit == "B" else (1024 if "i" in unit else 1000) ** ("KMG".index(unit[0]) + 1)
  return int(float(m.group(1)) * scale)


# ----------------------------------------------------------------------------------------------
# Import: Meta / HF → converted directory.
# ----------------------------------------------------------------------------------------------
def meta_files(src: Path) -> tuple[Path, list[Path]]:
  """``params.json`` and the one ``consolidated*.pth`` of a Meta checkpoint directory."""
  params_json = src / "params.json"
  if not params_json.is_file():
    raise FileNotFoundError(f"{src}: no params.json (a Meta checkpoint directory holds "
                            f"params.json and consolidated.pth)")
  weights_files = sorted(src.glob("consolidated*.pth"))
  if not weights_files:
    raise FileNotFoundError(f"{src}: no consolidated.pth")
  if len(weights_files) > 1:
    raise ValueError(f"{src}: {len(weights_files)} model-parallel shards "
                     f"{[f.name for f in weights_files]}; merge them into one consolidated.pth")
  return params_json, weights_files


def hf_files(src: Path) -> tuple[Path, list[Path]]:
  """``config.json`` and the weight files of a HF checkpoint directory (safetensors first)."""
  config_json = src / "config.json"
  if not config_json.is_file():
    raise FileNotFoundError(f"{src}: no config.json")
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if (src / index).is_file():
      names = sorted(set(json.loads((src / index).read_text())["weight_map"].values()))
      missing = [n for n in names if not (src / n).is_file()]
      if missing:
        raise FileNotFoundError(f"{src / index} names missing files {missing}")
      return config_json, [src / n for n in names]
  for single in ("model.safetensors", "pytorch_model.bin"):
    if (src / single).is_file():
      return config_json, [src / single]
  raise FileNotFoundError(f"{src}: no weights (looked for model.safetensors[.index.json] and "
                          f"pytorch_model.bin[.index.json])")


def find_tokenizer(fmt: str, src: Path, explicit: str | None) -> Path:
  """The tokenizer to carry: ``--tokenizer``, else the source directory's tokenizer files (for
  ``meta``: ``tokenizer.model`` in the directory or its parent)."""
  if explicit is not None:
    if not Path(explicit).exists():
      raise FileNotFoundError(f"--tokenizer {explicit}: no such file or directory")
    return Path(explicit)
  if fmt == "meta":
    candidates = [src / "tokenizer.model", src.parent / "tokenizer.model"]
    found = [c for c in candidates if c.is_file()]
  else:
    candidates = [src / n for n in pretrained.TOKENIZER_FILES]
    found = [src] if any(c.is_file() for c in candidates) else []
  if not found:
    raise FileNotFoundError(f"no tokenizer found (looked for {[str(c) for c in candidates]}); "
                            f"pass --tokenizer PATH")
  return found[0]


def _new_dir(dst: Path) -> None:
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise FileExistsError(f"{dst} exists and is not an empty directory")
  dst.mkdir(parents=True, exist_ok=True)


def convert(fmt: str, src: str | Path, dst: str | Path, *, dtype: str = "float32",
            tokenizer: str | None = None) -> dict:
  """Convert a ``meta`` or ``hf`` checkpoint directory into the converted directory ``dst``.

  Everything is checked (keys, shapes, ``n_future_tokens``, tokenizer) before any tensor is read.
  On failure ``dst`` is removed again. Returns a summary.
  """
  src, dst = Path(src), Path(dst)
  if fmt == "meta":
    config_file, files = meta_files(src)
    config = MTPConfig.from_params_json(config_file, param_dtype=dtype)
    entries = layouts.meta_entries(config)
  elif fmt == "hf":
    config_file, files = hf_files(src)
    # HF's ``dtype`` key is the storage dtype, not our compute dtype: set both explicitly.
    config = LlamaConfig.from_hf_config(config_file, dtype="float32", param_dtype=dtype)
    entries = layouts.hf_entries(config)
  else:
    raise ValueError(f"unknown source format {fmt!r}: expected 'meta' or 'hf'")
  reader = TensorFiles(files)
  specs = reader.specs()
  layouts.check_keys(entries, {k: shape for k, (shape, _) in specs.items()},
                     where=", ".join(str(f) for f in files))
  tokenizer_src = find_tokenizer(fmt, src, tokenizer)
  by_dtype = collections.Counter(d for k, (_, d) in specs.items() if k in entries)
  _new_dir(dst)
  try:
    pretrained.copy_tokenizer(tokenizer_src, dst, config.vocab_size, where=str(config_file))
    params = layouts.tensors_to_flax(entries, reader, config.block, dtype=jnp.dtype(dtype))
    pretrained.save_params(dst, config, params, source={
        "format": fmt, "path": str(src.absolute()), "dtype": by_dtype.most_common(1)[0][0]})
  except BaseException:
    shutil.rmtree(dst)
    raise
  n_params = sum(int(np.prod(e.shape)) for e in entries.values())
  return {"kind": pretrained.kind_of(config), "dst": str(dst), "n_params": n_params,
          "param_dtype": dtype, "source_dtypes": dict(by_dtype)}


# ----------------------------------------------------------------------------------------------
# Export: params tree + config → HF / Meta.
# ----------------------------------------------------------------------------------------------
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
  """Write a ``transformers`` ``LlamaForCausalLM`` directory (see the module docstring).

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
  _new_dir(dst)
  try:
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
  except BaseException:
    shutil.rmtree(dst)
    raise
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
  _new_dir(dst)
  try:
    state_dict = {k: to_torch(w) for k, w in layouts.flax_to_tensors(
        entries, params, config.block, dtype=jnp.dtype(dtype))}
    torch.save(state_dict, dst / "consolidated.pth")
    del state_dict
    (dst / "params.json").write_text(json.dumps(meta_params, indent=2) + "\n")
    _copy_tokenizer_files(tokenizer, dst)
  except BaseException:
    shutil.rmtree(dst)
    raise
  return {"dst": str(dst), "files": sorted(p.name for p in dst.iterdir()), "dtype": dtype}


# ----------------------------------------------------------------------------------------------
# CLI.
# ----------------------------------------------------------------------------------------------
def main(argv: list[str]) -> dict:
  """Run the CLI (see the module docstring); returns the summary it prints."""
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  for fmt in ("meta", "hf"):
    sub = commands.add_parser(fmt, help=f"{fmt} checkpoint → converted directory")
    sub.add_argument("--dtype", choices=("bf16", "fp32"), default="fp32",
                     help="stored parameter dtype")
    sub.add_argument("--tokenizer", help="tokenizer directory or tokenizer.model file")
  for target in ("export-hf", "export-meta"):
    sub = commands.add_parser(target, help=f"converted directory → {target[7:]} checkpoint")
    sub.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                     help="written dtype (default: the original checkpoint's)")
    if target == "export-hf":
      sub.add_argument("--max_shard_size", default="5GB")
  for sub in commands.choices.values():
    sub.add_argument("--src", required=True)
    sub.add_argument("--dst", required=True)
  args = parser.parse_args(argv)

  if args.command in ("meta", "hf"):
    return convert(args.command, args.src, args.dst, dtype=DTYPES[args.dtype],
                   tokenizer=args.tokenizer)
  src = pretrained.resolve(args.src)  # a converted directory or a finished run's WORKDIR
  config = pretrained.read_config(src)
  dtype = (DTYPES[args.dtype] if args.dtype else
           pretrained.source_dtype(src) or config.param_dtype)
  params = pretrained.LazyParams(src, dtype)
  tokenizer = src / pretrained.TOKENIZER_DIR
  tokenizer = tokenizer if tokenizer.is_dir() else None
  if args.command == "export-hf":
    summary = export_hf(config, params, args.dst, dtype=dtype, tokenizer=tokenizer,
                        max_shard_size=args.max_shard_size)
  else:
    summary = export_meta(config, params, args.dst, dtype=dtype, tokenizer=tokenizer)
  if isinstance(config, MTPConfig) and config.value_head:  # a shared-head verifiable policy
    summary["not_exported"] = "value_head (the Meta and HF layouts have no place for it)"
  return summary


if __name__ == "__main__":
  print(json.dumps(main(sys.argv[1:]), indent=2))
