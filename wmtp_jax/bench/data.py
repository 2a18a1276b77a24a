"""Benchmark of the data side: ``python -m wmtp_jax.bench data [flags]``.

Reports
  * ``pipeline``: records/s and tokens/s (real, unpadded tokens) of ``wmtp_jax.data.pipeline``
    for each ``--workers`` count, over one epoch of a generated dataset of ``--records`` code-like
    solution records (written to a temporary directory, indexed, with a byte-level BPE trained on
    it). ``startup_s`` is the time until every worker has delivered a batch; the rates exclude it.
  * ``sandbox``: programs/s of ``wmtp_jax.sandbox.run_many`` on ``--programs`` small programs
    with ``--sandbox-workers`` workers.
  * ``train_step``: the tokens/s a train step consumes: ``--train-tokens-per-s`` if given, else
    measured on the tiny MTP model (``presets.mtp("tiny")``): jitted ``value_and_grad`` of the
    mean logit at ``[--train-batch, --train-seq]``, median of a few warmed calls.
  * ``pipeline_over_train_step``: the pipeline's best tokens/s divided by the train step's (> 1:
    the input pipeline keeps up).
  * ``load_average_1m`` at the end: wall-clock rates are only comparable at a similar load.
"""

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.models import presets
from wmtp_jax import sandbox
from wmtp_jax.data import jsonl, pipeline, records, samplers, template
from wmtp_jax.data.tokenizer import train_bpe_tokenizer
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

_OPS = ("+", "-", "*", "//", "%")


def _solution(rng: np.random.Generator, n_lines: int) -> str:
  """A small Python function of ``n_lines`` assignments."""
  body = [f"    v{j} = v{int(rng.integers(0, j))} {rng.choice(_OPS)} {int(rng.integers(1, 99))}"
          for j in range(1, n_lines + 1)]
  return "def solve(v0):\n" + "\n".join(body) + f"\n    return v{n_lines}\n"


def _write_dataset(directory: Path, n_records: int, seed: int) -> Path:
  """``n_records`` records (8 per problem, half correct) in ``directory/train.jsonl``."""
  rng = np.random.default_rng(seed)
  rows = [{"instruction": f"Write solve(v0) for problem {i // 8}: apply the listed steps to v0.",
           "input": "" if i % 3 else f"v0 = {i}", "problem_id": f"p{i // 8:05d}",
           "is_correct": bool(i % 2), "difficulty": 1 + (i // 8) % 25,
           "output": _solution(rng, int(rng.integers(3, 40)))}
          for i in range(n_records)]
  path = directory / "train.jsonl"
  jsonl.write_jsonl(path, rows)
  return path


def _pipeline_rates(store, indices, tokenizer, *, workers: int, batch_size: int,
                    max_len: int) -> dict:
  """One epoch through ``make_dataset``.

  Batches come from the workers in turn, so the first ``max(workers, 1)`` batches wait for every
  worker to start: they count as start-up and the rates cover the remaining batches.
  """
  ds = pipeline.make_dataset(store, indices, tokenizer, batch_size=batch_size, max_len=max_len,
                             seed=0, num_epochs=1, drop_remainder=False, num_workers=workers)
  start = time.perf_counter()
  iterator = iter(ds)
  try:
    for _ in range(max(workers, 1)):
      next(iterator)
    warm = time.perf_counter()
    n_records = n_tokens = 0
    for batch in iterator:
      n_records += len(batch["lengths"])
      n_tokens += int(batch["lengths"].sum())
    elapsed = time.perf_counter() - warm
  finally:
    iterator.close()
  return {"workers": workers, "startup_s": round(warm - start, 3),
          "records_per_s": round(n_records / elapsed, 1),
          "tokens_per_s": round(n_tokens / elapsed, 1)}


def _sandbox_rate(n_programs: int, workers: int) -> dict:
  programs = [f"print(sum(i * i for i in range({k})))" for k in range(n_programs)]
  start = time.perf_counter()
  results = sandbox.run_many(programs, workers=workers, timeout_s=10, memory_mb=256)
  elapsed = time.perf_counter() - start
  return {"programs": n_programs, "workers": workers,
          "programs_per_s": round(n_programs / elapsed, 1),
          "passed": sum(r.passed for r in results)}


def _train_step_rate(batch: int, seq_len: int, repeats: int = 5) -> dict:
  """Tokens/s of a jitted forward+backward of the tiny MTP model (loss: mean logit)."""
  model = MTPTransformer(MTPConfig(**presets.mtp("tiny")))
  tokens = jnp.zeros((batch, seq_len), jnp.int32)
  params = model.init(jax.random.key(0), tokens)

  @jax.jit
  def step(params, tokens):
    return jax.value_and_grad(lambda p: model.apply(p, tokens).mean())(params)

  jax.block_until_ready(step(params, tokens))
  times = []
  for _ in range(repeats):
    begin = time.perf_counter()
    jax.block_until_ready(step(params, tokens))
    times.append(time.perf_counter() - begin)
  return {"model": "mtp tiny", "batch": batch, "seq_len": seq_len,
          "tokens_per_s": round(batch * seq_len / statistics.median(times), 1)}


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench data", description=__doc__)
  parser.add_argument("--records", type=int, default=4000)
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--max-len", type=int, default=1024)
  parser.add_argument("--vocab-size", type=int, default=1024)
  parser.add_argument("--programs", type=int, default=300)
  parser.add_argument("--sandbox-workers", type=int, default=2)
  parser.add_argument("--train-tokens-per-s", type=float, default=None)
  parser.add_argument("--train-batch", type=int, default=8)
  parser.add_argument("--train-seq", type=int, default=256)
  args = parser.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    path = _write_dataset(Path(tmp), args.records, seed=0)
    tokenizer = train_bpe_tokenizer(
        (template.format_prompt(r) + r["output"] for r in jsonl.read_jsonl(path)),
        args.vocab_size, Path(tmp) / "tokenizer")
    meta = records.build_index(path, tokenizer, length_fn=functools.partial(
        template.example_length, tokenizer=tokenizer))
    store = records.RecordStore(path)
    indices = samplers.balanced(meta["problem_index_map"], seed=0)
    result = {"records": len(indices),
              "pipeline": [_pipeline_rates(store, indices, tokenizer, workers=w,
                                           batch_size=args.batch_size, max_len=args.max_len)
                           for w in args.workers]}
  result["sandbox"] = _sandbox_rate(args.programs, args.sandbox_workers)
  result["train_step"] = (
      {"tokens_per_s": args.train_tokens_per_s} if args.train_tokens_per_s is not None
      else _train_step_rate(args.train_batch, args.train_seq))
  best = max(p["tokens_per_s"] for p in result["pipeline"])
  result["pipeline_over_train_step"] = round(best / result["train_step"]["tokens_per_s"], 2)
  result["load_average_1m"] = round(os.getloadavg()[0], 2)
  return result
