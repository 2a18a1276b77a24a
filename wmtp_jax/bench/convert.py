"""Benchmark: seconds and peak host memory of checkpoint conversion in each direction.

``--source meta`` (default) builds a random Meta-format MTP checkpoint (``consolidated.pth`` +
``params.json``, default ~1.06B parameters in fp16 ≈ 2.1 GB) and runs ``python -m
wmtp_jax.convert`` as a subprocess per step:

  ``meta->orbax``  ``meta``        Meta checkpoint → converted directory (``--dtype``)
  ``orbax->hf``    ``export-hf``   converted → HF ``LlamaForCausalLM`` + ``extra_heads.safetensors``
  ``orbax->meta``  ``export-meta`` converted → Meta checkpoint
  ``hf->orbax``    ``hf``          the exported HF directory → converted directory

``--source llama3`` builds a random HF checkpoint of LLaMA-3.2-1B's shape (``presets``
``llama3.2_1b``: 1.24B parameters, vocab 128256, tied embeddings, ``llama3`` RoPE scaling; bf16
``model.safetensors`` ≈ 2.5 GB) and times ``hf->orbax`` and ``verify`` (``python -m
wmtp_jax.convert verify``: transformers and ours in fp32 on ``--verify_seq_len`` tokens × 2 rows;
its JSON adds ``max_abs_diff``, ``passed`` and the in-process seconds of each model). The verify
default (32 positions past the original 8192-token context) needs ~17 GB for the attention
scores and ~8 GB of logits per model at that length, hence the shorter default here.

Each step reports wall seconds (process start and imports included), the peak RSS of the
subprocess (its own ``VmHWM``), the bytes on disk of its source and destination, and the peak RSS
above the import baseline (``python -m wmtp_jax.convert --help``: the imports alone) as a
fraction of the source size. Linux only (``/proc/self/status``).

The two steps that write a converted directory also report the cost of its SHA-256 manifest
(``checkpoints.integrity``, part of every save and verified before every restore), timed again
in-process on the written ``params/``: ``checksum_write_s`` as a ratio to the rest of the save
(``seconds − checksum_write_s``), and ``checksum_verify_s`` as a ratio to the ``orbax->hf`` step,
which restores that directory (and writes the export).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from safetensors.torch import save_file

from wmtp_jax import convert
from wmtp_jax.checkpoints import export, integrity, layouts
from wmtp_jax.data.tokenizer import train_bpe_tokenizer
from wmtp_jax.models import presets
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

_CORPUS = ["def f(x):\n    return x + 1\n", "print('hello world')\n",
           "for i in range(10):\n    total += i * i\n", "class A:\n    pass\n"] * 5


def _disk_bytes(path: Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# Runs a module as ``__main__`` and writes the process's own peak RSS (``VmHWM``, kB) to a file.
# ``ru_maxrss`` would not do: Linux carries the parent's high-water mark through fork/exec.
_MEASURED = """
import runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
try:
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
  with open("/proc/self/status") as f:
    peak_kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
  with open(out, "w") as f:
    f.write(peak_kb)
"""


def _checksum_costs(params_dir: Path, save_seconds: float) -> dict:
  """Seconds to write and to verify the manifest of ``params_dir`` (each timed once)."""
  start = time.perf_counter()
  integrity.write_manifest(params_dir)
  write = time.perf_counter() - start
  start = time.perf_counter()
  integrity.verify(params_dir)
  verify = time.perf_counter() - start
  return {"checksum_write_s": round(write, 2), "checksum_verify_s": round(verify, 2),
          "checksum_write_over_rest_of_save": round(write / max(save_seconds - write, 1e-9), 4)}


def _run(module: str, args: list[str], workdir: Path) -> tuple[float, int, str]:
  """Wall seconds, peak RSS (bytes) and stdout of ``python -m module args…`` in a fresh process
  (``verify`` exits with 1 on a mismatch: its JSON still comes back)."""
  peak_file = workdir / "peak_rss_kb"
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-c", _MEASURED, str(peak_file), module, *args],
                        stdout=subprocess.PIPE, text=True)
  seconds = time.perf_counter() - start
  if done.returncode and not (args[0] == "verify" and done.stdout.strip()):
    raise subprocess.CalledProcessError(done.returncode, [module, *args])
  return seconds, int(peak_file.read_text()) * 1024, done.stdout


def _write_meta(path: Path, cfg: MTPConfig, src_dtype: torch.dtype, seed: int) -> None:
  """A random Meta checkpoint with Meta's key names and shapes."""
  path.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  state_dict = {key: torch.from_numpy(rng.standard_normal(entry.shape, np.float32) * 0.02)
                .to(src_dtype) for key, entry in layouts.meta_entries(cfg).items()}
  torch.save(state_dict, path / "consolidated.pth")
  (path / "params.json").write_text(json.dumps({k: getattr(cfg, k) for k in export.META_PARAMS}))


def _write_hf(path: Path, cfg: LlamaConfig, src_dtype: torch.dtype, seed: int) -> None:
  """A random HF ``LlamaForCausalLM`` directory (``config.json`` + one ``model.safetensors``):
  matrices N(0, 0.02²), norm weights 1 + N(0, 0.02²)."""
  path.mkdir(parents=True)
  export.hf_config(cfg, str(src_dtype).removeprefix("torch.")).save_pretrained(path)
  rng = np.random.default_rng(seed)
  state_dict = {key: torch.from_numpy(rng.standard_normal(entry.shape, np.float32) * 0.02
                                      + (len(entry.shape) == 1)).to(src_dtype)
                for key, entry in layouts.hf_entries(cfg).items()}
  save_file(state_dict, path / "model.safetensors", metadata={"format": "pt"})


def _step(name: str, src: Path, dst: Path, command: list[str], workdir: Path,
          baseline: int) -> dict:
  """One conversion subprocess: its seconds, peak RSS and the sizes of ``src`` and ``dst``."""
  seconds, peak, _ = _run("wmtp_jax.convert", [*command, "--src", str(src), "--dst", str(dst)],
                          workdir)
  src_bytes, dst_bytes = _disk_bytes(src), _disk_bytes(dst)
  return {"direction": name, "seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20),
          "src_mb": round(src_bytes / 2**20), "dst_mb": round(dst_bytes / 2**20),
          "peak_rss_over_src": round(peak / src_bytes, 3),
          "peak_rss_above_baseline_over_src": round((peak - baseline) / src_bytes, 3)}


def _meta_steps(cfg: MTPConfig, args, workdir: Path, baseline: int) -> list[dict]:
  """meta->orbax, orbax->hf, orbax->meta, hf->orbax, with the checksum costs."""
  steps = [
      ("meta->orbax", "meta", "orbax", ["meta", "--dtype", args.dtype,
                                        "--tokenizer", str(workdir / "tokenizer")]),
      ("orbax->hf", "orbax", "hf", ["export-hf"]),
      ("orbax->meta", "orbax", "meta_back", ["export-meta"]),
      ("hf->orbax", "hf", "orbax_from_hf", ["hf", "--dtype", args.dtype]),
  ]
  results = []
  for name, src, dst, command in steps:
    results.append(_step(name, workdir / src, workdir / dst, command, workdir, baseline))
    if dst.startswith("orbax"):
      results[-1].update(_checksum_costs(workdir / dst / "params", results[-1]["seconds"]))
  export_seconds = next(r["seconds"] for r in results if r["direction"] == "orbax->hf")
  for r in results:
    if "checksum_verify_s" in r:
      r["checksum_verify_over_restore_step"] = round(r["checksum_verify_s"] / export_seconds, 4)
  return results


def _llama3_steps(args, workdir: Path, baseline: int) -> list[dict]:
  """hf->orbax, then verify of the converted directory against the HF one."""
  results = [_step("hf->orbax", workdir / "hf", workdir / "orbax",
                   ["hf", "--dtype", args.dtype, "--tokenizer", str(workdir / "tokenizer")],
                   workdir, baseline)]
  seconds, peak, out = _run("wmtp_jax.convert", [
      "verify", "--hf", str(workdir / "hf"), "--converted", str(workdir / "orbax"),
      "--seq-len", str(args.verify_seq_len), "--batch", "2"], workdir)
  summary = json.loads(out)
  results.append({"direction": "verify", "seconds": round(seconds, 2),
                  "peak_rss_mb": round(peak / 2**20), "tokens": summary["tokens"],
                  "passed": summary["passed"],
                  "max_abs_diff": summary["heads"][0]["max_abs_diff"],
                  "max_abs_logit": summary["heads"][0]["max_abs_logit"],
                  "in_process_seconds": summary["seconds"]})
  return results


def _model(args) -> MTPConfig | LlamaConfig:
  """The benchmarked model's config: an MTP model, or LLaMA-3.2-1B's shape (overridable)."""
  if args.source == "meta":
    return MTPConfig(dim=args.dim or 2048, n_layers=args.n_layers or 18,
                     n_heads=args.n_heads or 16, vocab_size=args.vocab or 32000, multiple_of=256,
                     ffn_dim_multiplier=1.0, n_future_tokens=args.n_future)
  overrides = {k: v for k, v in dict(
      hidden_size=args.dim, intermediate_size=args.dim and 4 * args.dim,
      num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
      num_key_value_heads=args.n_heads and max(args.n_heads // 4, 1),
      vocab_size=args.vocab).items() if v}
  return LlamaConfig(**presets.llama("llama3.2_1b", **overrides))


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", choices=("meta", "llama3"), default="meta")
  parser.add_argument("--dim", type=int, help="width (meta: 2048; llama3: the preset's)")
  parser.add_argument("--n_layers", type=int, help="layers (meta: 18)")
  parser.add_argument("--n_heads", type=int, help="attention heads (meta: 16)")
  parser.add_argument("--n_future", type=int, default=4)
  parser.add_argument("--vocab", type=int, help="vocabulary (meta: 32000)")
  parser.add_argument("--src_dtype", choices=("fp16", "bf16", "fp32"), default=None,
                      help="dtype of the generated checkpoint (meta: fp16 as Meta ships; "
                           "llama3: bf16)")
  parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                      help="stored dtype of the converted directory")
  parser.add_argument("--verify_seq_len", type=int, default=256,
                      help="llama3: tokens per row of the verify step")
  parser.add_argument("--workdir", help="where to write the checkpoints (default: a temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
  args = parser.parse_args(argv)

  cfg = _model(args)
  src_dtype = args.src_dtype or ("fp16" if args.source == "meta" else "bf16")
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wmtp_bench_convert_"))
  try:
    start = time.perf_counter()
    write = _write_meta if args.source == "meta" else _write_hf
    write(workdir / ("meta" if args.source == "meta" else "hf"), cfg,
          getattr(torch, convert.DTYPES[src_dtype]), seed=0)
    train_bpe_tokenizer(_CORPUS, 300, workdir / "tokenizer")
    generate_seconds = time.perf_counter() - start
    _, baseline, _ = _run("wmtp_jax.convert", ["--help"], workdir)  # the imports alone
    if args.source == "meta":
      results = _meta_steps(cfg, args, workdir, baseline)
    else:
      results = _llama3_steps(args, workdir, baseline)
  finally:
    if not args.keep:
      shutil.rmtree(workdir, ignore_errors=True)
  entries = layouts.meta_entries(cfg) if args.source == "meta" else layouts.hf_entries(cfg)
  n_params = sum(int(np.prod(e.shape)) for e in entries.values())
  b = cfg.block
  return {
      "model": {"source": args.source, "dim": b.dim, "n_heads": b.n_heads,
                "n_kv_heads": b.n_kv_heads, "vocab_size": cfg.vocab_size,
                "n_layers": cfg.n_layers if args.source == "meta" else cfg.num_hidden_layers,
                "n_future_tokens": getattr(cfg, "n_future_tokens", 1), "n_params": n_params,
                "src_dtype": convert.DTYPES[src_dtype],
                "converted_dtype": convert.DTYPES[args.dtype]},
      "workdir": str(workdir) if args.keep else None,
      "generate_seconds": round(generate_seconds, 1),
      "import_baseline_rss_mb": round(baseline / 2**20),
      "host_cpus": os.cpu_count(),
      "steps": results,
  }
