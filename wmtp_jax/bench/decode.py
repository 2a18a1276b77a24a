"""Benchmark: generation tokens/s, plain greedy vs self-speculative decoding with the MTP heads.

``python -m wmtp_jax.bench decode [--checkpoint DIR] [--train-steps 300] [--batch-sizes 1,8]
[--draft-heads 1,2,3] [--n-prompts 16] [--max-new-tokens 128]``

The model is a converted checkpoint / finished run (``--checkpoint``, with its tokenizer) or, by
default, the tiny MTP preset trained here for ``--train-steps`` on the embedded synthetic task
(uniform-weight MTP cross-entropy on the correct solutions; a minute or two on a laptop CPU), so
that the heads have something to agree on. Prompts are the Alpaca prompts of the synthetic test
problems. For every batch size: plain greedy decoding with head 0, then self-speculative decoding
with each number of draft heads; each after a warm-up call (compilation excluded), timed over
``--repeats`` calls (median). Reported: tokens/s, mean accepted length (tokens per model call and
row), speed-up over plain, the ratio of model calls (plain / speculative) and whether the outputs are token-for-token identical.

On the tiny preset (no trunk: ``n_layers = n_future_tokens = 4``, every head is one block) on a
CPU, a speculative pass runs ``k + 1`` blocks where a plain step runs one, and each step costs
well under a millisecond of mostly fixed overhead, so fewer calls do not pay for the heavier
ones; the speed-up needs a shared trunk that dominates the cost (Meta's 7B: 28 trunk blocks +
4 heads) and memory-bound decoding.
"""

import argparse
import logging
import pathlib
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax import generate as gen
from wmtp_jax import presets
from wmtp_jax.mtp import MTPConfig, MTPTransformer

log = logging.getLogger(__name__)


def train_tiny(steps: int, *, batch_size: int = 16, seed: int = 0, lr: float = 3e-3):
  """``(model, params, tokenizer, dataset_dir, final loss)``: the tiny MTP preset trained on the
  correct solutions of the synthetic task (generated into the usual cache if needed)."""
  import optax  # pylint: disable=import-outside-toplevel
  from wmtp_jax import losses  # pylint: disable=import-outside-toplevel
  from wmtp_jax.data import records, synthetic, template, tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  from wmtp_jax.eval import benchmarks  # pylint: disable=import-outside-toplevel

  directory = synthetic.ensure_dataset(benchmarks._default_synthetic_dir())  # pylint: disable=protected-access
  tok = tokenizer_lib.load_tokenizer(directory / "tokenizer")
  cfg = MTPConfig(**presets.mtp("tiny"))
  model = MTPTransformer(cfg)
  examples = [e for r in records.read_jsonl(directory / "train.jsonl") if r["is_correct"]
              for e in [template.encode(r, tok, cfg.max_seq_len)] if e is not None]
  params = jax.jit(lambda key: nn.meta.unbox(
      model.init(key, jnp.zeros((1, 8), jnp.int32)))["params"])(jax.random.key(seed))
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(20, steps), steps, lr / 10)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.95,
                                                                 weight_decay=0.0))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, tokens, labels, attention_mask):
    def loss_fn(p):
      logits = model.apply({"params": p}, tokens, attention_mask)
      return losses.mtp_cross_entropy(logits, labels, attention_mask)["loss"]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  loss = float("nan")
  for i in range(steps):
    batch = template.collate([examples[j] for j in rng.integers(0, len(examples), batch_size)],
                             pad_id=tok.pad_token_id, bucket_lengths=(128, cfg.max_seq_len))
    params, opt_state, loss = step(params, opt_state, batch["tokens"], batch["labels"],
                                   batch["attention_mask"])
    if (i + 1) % 50 == 0 or i + 1 == steps:
      log.info("train step %d/%d loss %.4f", i + 1, steps, float(loss))
  return model, params, tok, directory, float(loss)


def _load(checkpoint: str):
  from wmtp_jax import pretrained  # pylint: disable=import-outside-toplevel
  from wmtp_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(checkpoint)
  source = path / "model" if (path / "model" / pretrained.CONFIG_FILE).is_file() else path
  cfg = pretrained.read_config(source)
  model = pretrained.KINDS[pretrained.kind_of(cfg)][1](cfg)
  abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                    nn.meta.unbox(pretrained.abstract_params(cfg)))
  params = pretrained.restore_params(source, abstract)
  return model, params, tokenizer_lib.load_tokenizer(source / "tokenizer")


def _timed(generator, params, prompts, repeats: int, **kwargs):
  generator(params, prompts, **kwargs)  # compile
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = generator(params, prompts, **kwargs)
    runs.append((time.perf_counter() - start, result))
  seconds = statistics.median(t for t, _ in runs)
  return seconds, runs[0][1]


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench decode", description=__doc__)
  parser.add_argument("--checkpoint", default="", help="converted checkpoint or training workdir")
  parser.add_argument("--train-steps", type=int, default=300)
  parser.add_argument("--batch-sizes", default="1,8")
  parser.add_argument("--draft-heads", default="1,2,3")
  parser.add_argument("--n-prompts", type=int, default=16)
  parser.add_argument("--max-new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  from wmtp_jax.data import records  # pylint: disable=import-outside-toplevel
  from wmtp_jax.eval import benchmarks, runner  # pylint: disable=import-outside-toplevel

  report: dict = {"device": jax.devices()[0].device_kind, "n_devices": jax.device_count()}
  if args.checkpoint:
    model, params, tok = _load(args.checkpoint)
    directory = benchmarks._default_synthetic_dir()  # pylint: disable=protected-access
    report["model"] = args.checkpoint
  else:
    started = time.perf_counter()
    model, params, tok, directory, loss = train_tiny(args.train_steps)
    report.update(model="tiny MTP preset trained on the synthetic task",
                  train_steps=args.train_steps, train_loss=loss,
                  train_s=time.perf_counter() - started)
  problems = records.read_problems(directory / "test.problems.jsonl")[:args.n_prompts]
  prompts = [runner.encode_prompt(tok, benchmarks.make_prompt(p, "alpaca")) for p in problems]
  report.update(n_prompts=len(prompts), max_new_tokens=args.max_new_tokens,
                n_heads=getattr(model.cfg, "n_future_tokens", 1), results=[])
  for batch_size in map(int, args.batch_sizes.split(",")):
    kwargs = dict(max_new_tokens=args.max_new_tokens, eos_id=tok.eos_token_id,
                  batch_size=batch_size, pad_id=tok.pad_token_id or 0)
    seconds, plain = _timed(gen.Generator(model), params, prompts, args.repeats, **kwargs)
    row = {"batch_size": batch_size, "plain_tokens_per_s": plain.stats["tokens"] / seconds,
           "generated_tokens": plain.stats["tokens"], "speculative": []}
    for k in map(int, args.draft_heads.split(",")):
      if k >= report["n_heads"]:
        continue
      spec_seconds, spec = _timed(gen.Generator(model, draft_heads=k), params, prompts,
                                  args.repeats, **kwargs)
      row["speculative"].append({
          "draft_heads": k, "tokens_per_s": spec.stats["tokens"] / spec_seconds,
          "mean_accepted_length": spec.stats["mean_accepted_length"],
          "speedup": seconds / spec_seconds,
          # Fewer model calls is what speeds up a large, memory-bound model on an accelerator.
          "model_calls_ratio": plain.stats["decode_steps"] / max(1, spec.stats["decode_steps"]),
          "identical_to_plain": spec.tokens == plain.tokens})
    report["results"].append(row)
  return report
