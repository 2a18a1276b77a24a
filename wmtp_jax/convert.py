"""Convert Meta MTP and Hugging Face LLaMA checkpoints into converted directories, and export back.

    python -m wmtp_jax.convert meta --src DIR --dst DIR [--dtype bf16|fp32] [--tokenizer PATH]
    python -m wmtp_jax.convert hf   --src DIR --dst DIR [--dtype bf16|fp32] [--tokenizer PATH]
    python -m wmtp_jax.convert export-hf   --src CONVERTED_OR_WORKDIR --dst DIR
                                           [--dtype bf16|fp16|fp32] [--max_shard_size 5GB]
    python -m wmtp_jax.convert export-meta --src CONVERTED_OR_WORKDIR --dst DIR
                                           [--dtype bf16|fp16|fp32]
    python -m wmtp_jax.convert verify --converted CONVERTED_OR_WORKDIR (--hf DIR | --meta DIR)
                                      [--seq-len S] [--batch B] [--seed N] [--tolerance 1e-4]

Sources:
  ``meta``: ``params.json`` + ``consolidated.pth`` (Meta's MTP release, e.g. ``7B_1T_4``) → an
    ``MTPTransformer`` tree (``kind: mtp``). The tokenizer is ``--tokenizer`` or the
    ``tokenizer.model`` in the directory or its parent (Meta's release layout).
  ``hf``: ``config.json`` + ``model.safetensors`` | sharded ``*.safetensors`` with
    ``model.safetensors.index.json`` | ``pytorch_model.bin`` (optionally sharded with
    ``pytorch_model.bin.index.json``) → a ``LlamaForCausalLM`` tree (``kind: llama``; the
    ``ValueModel`` backbone is its ``model`` subtree; LLaMA-3's ``llama3`` RoPE scaling and tied
    embeddings, without ``lm_head.weight``, included). The tokenizer files come from the same
    directory or ``--tokenizer``. An ``export-hf`` output of an MTP model (``config.json`` of
    the next-token path + ``extra_heads.safetensors``) becomes that MTP model again (``kind:
    mtp``, every head; see ``wmtp_jax.checkpoints.export.exported_mtp_config``).
  ``--dtype`` is the stored parameter dtype (default fp32: exact for fp16/bf16/fp32 sources).
  The destination layout is described in ``wmtp_jax.checkpoints.pretrained``.

Exports (``--src`` a converted directory; ``--dtype`` defaults to the original checkpoint's):
  ``export-hf``: ``config.json`` + ``model.safetensors`` (or ``model-0000i-of-0000N.safetensors`` +
    ``model.safetensors.index.json`` beyond ``--max_shard_size``) of a ``LlamaForCausalLM`` that
    ``transformers`` loads, plus the tokenizer files. For an MTP model it is the next-token path
    (``n_layers − n_future + 1`` layers: trunk + head 0, shared norm and output) and
    ``extra_heads.safetensors`` holds heads 1 … n−1 as ``extra_heads.{k−1}.<block sub-key>`` in HF
    layout (``self_attn.q_proj.weight``, …, ``mlp.gate_proj.weight``, ``input_layernorm.weight``,
    …; see ``wmtp_jax.checkpoints.layouts.mtp_hf_entries``; no tensor for ``n_future = 1``),
    with ``n_future_tokens`` and the MTP config (``mtp_config``: the fields of Meta's
    ``params.json``) in its metadata.
  ``export-meta``: ``params.json`` + ``consolidated.pth`` in Meta's layout (RoPE rows permuted back
    to interleaved) + the tokenizer files; MTP models only.

Verification (``verify``): the source model (``--hf``: ``transformers``; ``--meta``: the PyTorch
  transcription ``wmtp_jax.checkpoints.torch_mtp``) and ours run in fp32 on the same random tokens
  (past ``original_max_position_embeddings`` when RoPE scaling is set); prints the max
  |Δlogits| per head (JSON) and exits with status 1 when a head exceeds the fp32 tolerance
  (``|Δ| ≤ tol + tol·|logit|``, tol 1e-4). See ``wmtp_jax.checkpoints.verify``.

Everything is strict: missing, unexpected or wrongly shaped keys are errors listing the names
(``rotary_emb.inv_freq`` buffers are skipped), so is an ``n_future_tokens`` that does not match the
blocks present, and a tokenizer whose vocabulary exceeds the model's. On the command line such an
error (or a missing source, a destination that exists and is not empty) is one line on stderr,
exit status 1; the destination is then not written.

This module is the CLI and the import entry ``convert``; the library is in
``wmtp_jax.checkpoints``: ``sources`` (reading the source files), ``export`` (``export_hf``,
``export_meta``), ``layouts`` (the tensor names and layouts) and ``verify``.

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
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from wmtp_jax.checkpoints import integrity, layouts, pretrained, verify
from wmtp_jax.checkpoints.export import (EXTRA_HEADS_FILE, export_hf, export_meta,
                                         exported_mtp_config)
from wmtp_jax.checkpoints.sources import TensorFiles, find_tokenizer, hf_files, meta_files, new_dir
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


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
    if (src / EXTRA_HEADS_FILE).is_file():  # export-hf of an MTP model: the MTP model again
      config = exported_mtp_config(config, src / EXTRA_HEADS_FILE)
      next_token_path, extra_heads = layouts.mtp_hf_entries(config)
      entries, files = {**next_token_path, **extra_heads}, [*files, src / EXTRA_HEADS_FILE]
  else:
    raise ValueError(f"unknown source format {fmt!r}: expected 'meta' or 'hf'")
  reader = TensorFiles(files)
  specs = reader.specs()
  layouts.check_keys(entries, {k: shape for k, (shape, _) in specs.items()},
                     where=", ".join(str(f) for f in files))
  tokenizer_src = find_tokenizer(fmt, src, tokenizer)
  by_dtype = collections.Counter(d for k, (_, d) in specs.items() if k in entries)
  with new_dir(dst):
    pretrained.copy_tokenizer(tokenizer_src, dst, config.vocab_size, where=str(config_file))
    params = layouts.tensors_to_flax(entries, reader, config.block, dtype=jnp.dtype(dtype))
    pretrained.save_params(dst, config, params, source={
        "format": fmt, "path": str(src.absolute()), "dtype": by_dtype.most_common(1)[0][0]})
  n_params = sum(int(np.prod(e.shape)) for e in entries.values())
  return {"kind": pretrained.kind_of(config), "dst": str(dst), "n_params": n_params,
          "param_dtype": dtype, "source_dtypes": dict(by_dtype)}


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
  check = commands.add_parser("verify", help="converted directory vs its source model (logits)")
  check.add_argument("--converted", required=True, help="converted directory or finished WORKDIR")
  source = check.add_mutually_exclusive_group(required=True)
  source.add_argument("--hf", help="the HF LlamaForCausalLM directory it was converted from")
  source.add_argument("--meta", help="the Meta params.json + consolidated.pth directory")
  check.add_argument("--seq-len", type=int, default=None,
                     help="tokens per row (default: 32 past the original context with RoPE "
                          "scaling, else 64)")
  check.add_argument("--batch", type=int, default=2)
  check.add_argument("--seed", type=int, default=0)
  check.add_argument("--tolerance", type=float, default=verify.DEFAULT_TOLERANCE)
  args = parser.parse_args(argv)

  if args.command == "verify":
    return verify.verify(args.converted, hf=args.hf, meta=args.meta, seq_len=args.seq_len,
                         batch=args.batch, seed=args.seed, tolerance=args.tolerance)

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
  try:
    summary = main(sys.argv[1:])
  except (OSError, ValueError, integrity.CorruptCheckpointError) as e:  # the reason, no traceback
    sys.exit(f"python -m wmtp_jax.convert: error: {e}")
  print(json.dumps(summary, indent=2))
  if not summary.get("passed", True):  # verify: a head above the tolerance
    failed = [h["head"] for h in summary["heads"] if not h["passed"]]
    sys.exit(f"python -m wmtp_jax.convert verify: FAILED: heads {failed} differ from the source "
             f"beyond the tolerance {summary['tolerance']}")
