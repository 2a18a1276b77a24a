"""Benchmark: seconds and peak host memory of checkpoint conversion in each direction.

Builds a random Meta-format MTP checkpoint (``consolidated.pth`` + ``params.json``, default ~1.06B
parameters in fp16 ≈ 2.1 GB) and runs ``python -m wmtp_jax.convert`` as a subprocess per step:

  ``meta->orbax``  ``meta``        Meta checkpoint → converted directory (``--dtype``)
  ``orbax->hf``    ``export-hf``   converted → HF ``LlamaForCausalLM`` + ``extra_heads.safetensors``
  ``orbax->meta``  ``export-meta`` converted → Meta checkpoint
  ``hf->orbax``    ``hf``          the exported HF directory → converted directory

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

from wmtp_jax import convert
from wmtp_jax.checkpoints import export, integrity, layouts
from wmtp_jax.data.tokenizer import train_bpe_tokenizer
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


def _run(module: str, args: list[str], workdir: Path) -> tuple[float, int]:
  """Wall seconds and peak RSS (bytes) of ``python -m module args…`` in a fresh process."""
  peak_file = workdir / "peak_rss_kb"
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", _MEASURED, str(peak_file), module, *args], check=True,
                 stdout=subprocess.DEVNULL)
  seconds = time.perf_counter() - start
  return seconds, int(peak_file.read_text()) * 1024


def _write_meta(path: Path, cfg: MTPConfig, src_dtype: torch.dtype, seed: int) -> None:
  """A random Meta checkpoint with Meta's key names and shapes."""
  path.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  state_dict = {key: torch.from_numpy(rng.standard_normal(entry.shape, np.float32) * 0.02)
                .to(src_dtype) for key, entry in layouts.meta_entries(cfg).items()}
  torch.save(state_dict, path / "consolidated.pth")
  (path / "params.json").write_text(json.dumps({k: getattr(cfg, k) for k in export.META_PARAMS}))


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench convert", description=__doc__)
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--n_layers", type=int, default=18)
  parser.add_argument("--n_heads", type=int, default=16)
  parser.add_argument("--n_future", type=int, default=4)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--src_dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                      help="dtype of the generated Meta checkpoint (Meta ships fp16)")
  parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                      help="stored dtype of the converted directory")
  parser.add_argument("--workdir", help="where to write the checkpoints (default: a temp dir)")
  parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
  args = parser.parse_args(argv)

  cfg = MTPConfig(dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                  vocab_size=args.vocab, multiple_of=256, ffn_dim_multiplier=1.0,
                  n_future_tokens=args.n_future)
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wmtp_bench_convert_"))
  try:
    start = time.perf_counter()
    _write_meta(workdir / "meta", cfg, getattr(torch, convert.DTYPES[args.src_dtype]), seed=0)
    train_bpe_tokenizer(_CORPUS, 300, workdir / "tokenizer")
    generate_seconds = time.perf_counter() - start

    _, baseline = _run("wmtp_jax.convert", ["--help"], workdir)  # the imports alone
    steps = [
        ("meta->orbax", "meta", "orbax", ["meta", "--dtype", args.dtype,
                                          "--tokenizer", str(workdir / "tokenizer")]),
        ("orbax->hf", "orbax", "hf", ["export-hf"]),
        ("orbax->meta", "orbax", "meta_back", ["export-meta"]),
        ("hf->orbax", "hf", "orbax_from_hf", ["hf", "--dtype", args.dtype]),
    ]
    results = []
    for name, src, dst, command in steps:
      seconds, peak = _run("wmtp_jax.convert",
                           [*command, "--src", str(workdir / src), "--dst", str(workdir / dst)],
                           workdir)
      src_bytes, dst_bytes = _disk_bytes(workdir / src), _disk_bytes(workdir / dst)
      results.append({
          "direction": name, "seconds": round(seconds, 2),
          "peak_rss_mb": round(peak / 2**20), "src_mb": round(src_bytes / 2**20),
          "dst_mb": round(dst_bytes / 2**20),
          "peak_rss_over_src": round(peak / src_bytes, 3),
          "peak_rss_above_baseline_over_src": round((peak - baseline) / src_bytes, 3)})
      if dst.startswith("orbax"):
        results[-1].update(_checksum_costs(workdir / dst / "params", seconds))
    export_seconds = next(r["seconds"] for r in results if r["direction"] == "orbax->hf")
    for r in results:
      if "checksum_verify_s" in r:
        r["checksum_verify_over_restore_step"] = round(r["checksum_verify_s"] / export_seconds, 4)
  finally:
    if not args.keep:
      shutil.rmtree(workdir, ignore_errors=True)
  n_params = sum(int(np.prod(e.shape)) for e in layouts.meta_entries(cfg).values())
  return {
      "model": {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
                "n_future_tokens": cfg.n_future_tokens, "vocab_size": cfg.vocab_size,
                "n_params": n_params, "src_dtype": convert.DTYPES[args.src_dtype],
                "converted_dtype": convert.DTYPES[args.dtype]},
      "workdir": str(workdir) if args.keep else None,
      "generate_seconds": round(generate_seconds, 1),
      "import_baseline_rss_mb": round(baseline / 2**20),
      "host_cpus": os.cpu_count(),
      "steps": results,
  }
