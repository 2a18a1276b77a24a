"""Benchmark: plain MTP cross-entropy vs the memory-efficient blockwise one.

Both compute ``jax.value_and_grad`` of the loss w.r.t. ``hidden [B, S, n, D]`` and
``unembedding [D, V]``: the plain one materialises ``logits = hidden @ unembedding`` and calls
``mtp_cross_entropy``; the memory-efficient one calls ``mtp_cross_entropy_from_hidden``. Reported:
compiled temporary / argument / output sizes (``memory_analysis()``) and the median wall time (and
process CPU time) of warmed, jitted calls, with the ratios efficient / plain (target: temp <= 0.25,
time <= 1.3).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.losses.blockwise_ce import DEFAULT_TOKEN_BLOCK, DEFAULT_VOCAB_BLOCK
from wmtp_jax.losses import mtp_cross_entropy, mtp_cross_entropy_from_hidden


def _inputs(batch: int, seq_len: int, n: int, vocab: int, dim: int, dtype):
  """Random hidden/unembedding, labels with a quarter-length prompt, full attention, 2-D weights."""
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(batch, seq_len, n, dim)), dtype)
  unembedding = jnp.asarray(rng.normal(size=(dim, vocab)) / np.sqrt(dim), dtype)
  labels = rng.integers(0, vocab, size=(batch, seq_len))
  labels[:, :seq_len // 4] = IGNORE_INDEX
  attention_mask = np.ones((batch, seq_len), np.int32)
  weights = rng.uniform(0.1, 3.0, size=(batch, seq_len)).astype(np.float32)
  return hidden, unembedding, jnp.asarray(labels), jnp.asarray(attention_mask), jnp.asarray(weights)


def _compile(loss_fn, args):
  """Compiled ``value_and_grad`` of ``loss_fn`` w.r.t. args 0 and 1, and its memory analysis."""
  compiled = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(*args).compile()
  memory = compiled.memory_analysis()
  sizes = {} if memory is None else {
      "temp_bytes": memory.temp_size_in_bytes,
      "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes}
  return compiled, sizes


def _time_interleaved(compiled_fns, args, repeats: int) -> list[dict]:
  """Median wall and process-CPU seconds per call; calls alternate between the functions so
  load from other processes on a shared machine affects both alike. One warm-up call each."""
  for fn in compiled_fns:
    jax.block_until_ready(fn(*args))
  wall = [[] for _ in compiled_fns]
  cpu = [[] for _ in compiled_fns]
  for _ in range(repeats):
    for i, fn in enumerate(compiled_fns):
      wall_start, cpu_start = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*args))
      wall[i].append(time.perf_counter() - wall_start)
      cpu[i].append(time.process_time() - cpu_start)
  return [{"time_s": statistics.median(w), "cpu_time_s": statistics.median(c)}
          for w, c in zip(wall, cpu)]


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench loss", description=__doc__)
  parser.add_argument("--B", type=int, default=2)
  parser.add_argument("--S", type=int, default=1024)
  parser.add_argument("--n", type=int, default=4)
  parser.add_argument("--V", type=int, default=32000)
  parser.add_argument("--D", type=int, default=512)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--vocab_block", type=int, default=DEFAULT_VOCAB_BLOCK)
  parser.add_argument("--token_block", type=int, default=DEFAULT_TOKEN_BLOCK)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  hidden, unembedding, labels, attention_mask, weights = _inputs(
      args.B, args.S, args.n, args.V, args.D, jnp.dtype(args.dtype))

  def plain(hidden_BxSxnxD, unembedding_DxV):
    logits_BxSxnxV = jnp.einsum("bsnd,dv->bsnv", hidden_BxSxnxD, unembedding_DxV,
                                preferred_element_type=jnp.float32)
    return mtp_cross_entropy(logits_BxSxnxV, labels, attention_mask, weights)["loss"]

  def efficient(hidden_BxSxnxD, unembedding_DxV):
    return mtp_cross_entropy_from_hidden(
        hidden_BxSxnxD, unembedding_DxV, labels, attention_mask, weights,
        vocab_block=args.vocab_block, token_block=args.token_block)["loss"]

  plain_fn, plain_result = _compile(plain, (hidden, unembedding))
  efficient_fn, efficient_result = _compile(efficient, (hidden, unembedding))
  plain_times, efficient_times = _time_interleaved((plain_fn, efficient_fn),
                                                   (hidden, unembedding), args.repeats)
  plain_result.update(plain_times)
  efficient_result.update(efficient_times)
  result = {
      "config": vars(args),
      "backend": jax.default_backend(),
      "plain": plain_result,
      "efficient": efficient_result,
      "time_ratio": efficient_result["time_s"] / plain_result["time_s"],
      "cpu_time_ratio": efficient_result["cpu_time_s"] / plain_result["cpu_time_s"],
  }
  if "temp_bytes" in plain_result:
    result["temp_ratio"] = efficient_result["temp_bytes"] / plain_result["temp_bytes"]
  return result
