"""Benchmark: generation tokens/s, plain greedy vs self-speculative decoding with the MTP heads.

``python -m wmtp_jax.bench decode [--checkpoint DIR] [--train-steps 300] [--n-layers N] [--dim D]
[--batch-sizes 1,8] [--draft-heads 1,2,3] [--n-prompts 16] [--max-new-tokens 128] [--pass-costs]``

The model is a converted checkpoint / finished run (``--checkpoint``, with its tokenizer) or, by
default, the tiny MTP preset (4 trunk blocks + 4 head blocks, width 128; ``--n-layers`` /
``--dim`` change its shape) trained here for ``--train-steps`` on the embedded synthetic task
(``train_tiny``: the ``baseline`` objective's train step, uniform-weight MTP cross-entropy on
the correct solutions; 3–4 minutes on 2 CPU cores), so that the heads have something to agree
on. Prompts are the Alpaca prompts of the synthetic test problems. For every batch size
(``generation_speed``): plain greedy decoding with head 0, then self-speculative decoding with
each number of draft heads; each after a warm-up call (compilation excluded), timed over
``--repeats`` calls (median). Reported: tokens/s, mean accepted length (tokens per model call and
row), speed-up over plain, the ratio of model calls (plain / speculative) and whether the outputs
are token-for-token identical; with ``--pass-costs`` the cost split of one pass (``pass_costs``).

Why there is no speed-up on a CPU (2 shared cores, one run each; ±20 % noise from other load).
A plain step runs the trunk and head 0 on 1 token; a speculative pass runs the trunk and all
``k + 1`` heads on ``k + 1`` tokens (every head block must write its KV cache). With ``k = 3``,
batch 1, µs per pass:

    model                          plain  trunk+head0 ×4 tok  +3 draft heads  +unembed  bound
    tiny (4 trunk + 4 heads, 128)    415                 576            1014      1061  1.57×
    16 layers (12 + 4 heads, 64)     427                 618             991      1021  1.67×

A pass yields at most ``k + 1`` tokens, so the speed-up of decoding is at most
``(k + 1) · plain / speculative`` ("bound", < 2× even at full acceptance) and about
``mean_accepted_length · plain / speculative`` (3.42 · 415 / 1061 = 1.34× for the tiny model).
Two things make the pass expensive here: at these widths a CPU is not memory-bound, so a block on
4 tokens costs 1.3–1.4× a block on 1, and the 3 draft-head blocks are a large part of a small
trunk. The unembedding (``V = 512``; only head 0 at every position, the draft heads at the
accepted one) is under 5 %. End to end the tiny model measured 0.86–0.93× (batch 1) because the
answers end after ~23 tokens, so prefill — where speculation runs all heads over the prompt
(7.1 vs 4.4 ms per prompt) — weighs as much as decoding. A 2× speed-up needs ``speculative /
plain ≤ mean_accepted_length / 2``: on an accelerator, where decoding a 7B model is memory-bound
(4 tokens cost about what 1 does) and 28 trunk blocks dominate 4 heads, the ratio is about
32 / 29 ≈ 1.1, so a mean accepted length ≥ 2.2 suffices; the trained tiny heads reach 2.65 (2
draft heads) and 3.42 (3).
"""

import argparse
import functools
import logging
import pathlib
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax import objectives
from wmtp_jax.bench import _configs
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.data import jsonl, synthetic, template, tokenizer as tokenizer_lib
from wmtp_jax.decoding import generator as gen
from wmtp_jax.decoding.adapter import ModelAdapter
from wmtp_jax.eval import prompts, runner
from wmtp_jax.training import mesh as mesh_lib, state as state_lib, step as step_lib

log = logging.getLogger(__name__)
STEP_KEYS = ("tokens", "labels", "attention_mask", "is_correct")  # what the baseline step reads


def _train_batches(directory: pathlib.Path, tok, batch_size: int, max_len: int, seed: int = 0):
  """Endless batches of the correct train solutions of ``directory``, encoded as in training
  (``data.template``), shuffled per epoch, ``batch_size`` rows right-padded to ``max_len``."""
  examples = [e for r in jsonl.read_jsonl(directory / "train.jsonl") if r["is_correct"]
              for e in [template.encode(r, tok, max_len)] if e is not None]
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(examples))
    for first in range(0, len(order) - batch_size + 1, batch_size):
      batch = template.collate([examples[i] for i in order[first:first + batch_size]],
                               pad_id=tok.pad_token_id or 0, pad_to=max_len)
      yield {k: batch[k] for k in STEP_KEYS}


def train_tiny(steps: int, *, dataset: pathlib.Path | None = None, batch_size: int = 16,
               max_len: int = 256, **shape: int):
  """``(model, params, tokenizer, dataset_dir, final loss)``: the tiny MTP preset (``shape``
  overrides such as ``n_layers``, ``dim``) trained for ``steps`` steps by the train step
  (``training.step``) with the ``baseline`` objective (uniform-weight MTP cross-entropy) and the
  tiny runs' optimizer (``_configs.run_config``), on ``batch_size`` shuffled correct solutions
  of the synthetic task padded to ``max_len`` (``dataset``, default the synthetic dataset the runs
  use, generated if missing). No config file and no data pipeline: it runs where ml-collections
  and grain are not installed."""
  directory = dataset or synthetic.cached_dataset()
  tok = tokenizer_lib.load_tokenizer(directory / synthetic.TOKENIZER_DIR)
  config = _configs.run_config("baseline", "tiny", _configs.mtp_model("tiny", **shape))
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  state, frozen, context, _ = state_lib.build_state(config, objective, mesh, rules,
                                                    total_steps=steps)
  batches = _train_batches(directory, tok, batch_size, max_len, seed=config.seed)
  put = lambda b: jax.device_put(b, context.batch_sharding)
  batch = put(next(batches))
  step_fn, _, _ = step_lib.compile_steps(context, config, state, frozen, batch)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for i in range(steps):
      state, metrics = step_fn(state, frozen, batch)
      if (i + 1) % 50 == 0 or i + 1 == steps:
        log.info("train_tiny step %d/%d: loss %.4f", i + 1, steps, float(metrics["loss"]))
      batch = put(next(batches))
  params = state_lib.merged_params(context, state, frozen)
  return objective.model, params, tok, directory, float(metrics["loss"])


def synthetic_prompts(directory: pathlib.Path, tok, n: int) -> list[list[int]]:
  """Token ids of the Alpaca prompts of the first ``n`` test problems of ``directory``."""
  problems = jsonl.read_problems(directory / "test.problems.jsonl")[:n]
  return [runner.encode_prompt(tok, prompts.Format("synthetic").prompt(p)) for p in problems]


def _load(checkpoint: str):
  """``(model, params, tokenizer)`` of a converted directory or a finished run's workdir."""
  cfg, params = pretrained.load_pretrained(checkpoint)
  model = pretrained.KINDS[pretrained.kind_of(cfg)][1](cfg)
  return model, params, pretrained.load_tokenizer(pretrained.resolve(checkpoint))


def _timed(generator, params, prompts, repeats: int, **kwargs):
  generator(params, prompts, **kwargs)  # compile
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = generator(params, prompts, **kwargs)
    runs.append((time.perf_counter() - start, result))
  seconds = statistics.median(t for t, _ in runs)
  return seconds, runs[0][1]


def generation_speed(model, params, prompts, *, batch_size: int, draft_heads, repeats: int,
                     **kwargs) -> dict:
  """Plain greedy decoding with head 0, then self-speculative decoding with each number of
  ``draft_heads``, of ``prompts`` in batches of ``batch_size`` (``kwargs``: ``max_new_tokens``,
  ``eos_id``, ``pad_id`` of ``Generator.generate``); each after a warm-up call, the median of
  ``repeats`` calls. ``{"batch_size", "plain_tokens_per_s", "generated_tokens", "speculative":
  [{"draft_heads", "tokens_per_s", "mean_accepted_length", "speedup", "model_calls_ratio",
  "identical_to_plain"}]}``."""
  kwargs.update(batch_size=batch_size)
  seconds, plain = _timed(gen.Generator(model), params, prompts, repeats, **kwargs)
  row = {"batch_size": batch_size, "plain_tokens_per_s": plain.stats["tokens"] / seconds,
         "generated_tokens": plain.stats["tokens"], "speculative": []}
  for k in draft_heads:
    spec_seconds, spec = _timed(gen.Generator(model, draft_heads=k), params, prompts, repeats,
                                **kwargs)
    row["speculative"].append({
        "draft_heads": k, "tokens_per_s": spec.stats["tokens"] / spec_seconds,
        "mean_accepted_length": spec.stats["mean_accepted_length"],
        "speedup": seconds / spec_seconds,
        # Fewer model calls is what speeds up a large, memory-bound model on an accelerator.
        "model_calls_ratio": plain.stats["decode_steps"] / max(1, spec.stats["decode_steps"]),
        "identical_to_plain": spec.tokens == plain.tokens})
  return row


def pass_us(model, params, batch_size: int, *, tokens: int, heads: int, unembed: str,
            cache_len: int = 256, passes: int = 32, repeats: int = 5) -> float:
  """Microseconds per KV-cache forward pass of ``batch_size`` rows on ``tokens`` new tokens
  through the trunk and the first ``heads`` heads, ``passes`` of them inside one jitted
  ``fori_loop`` (no dispatch; best of ``repeats``). ``unembed``: ``"logits"`` (every head at
  every position), ``"hidden"`` (none: hidden states only) or ``"speculative"`` (as a speculative
  pass: head 0 at every position, the draft heads at one)."""
  adapter = ModelAdapter(model)

  def body(i, carry):
    cache, acc = carry
    tokens_BxT = (jnp.arange(batch_size * tokens).reshape(batch_size, tokens) + i) % 97
    slot_B = jnp.full((batch_size,), 32, jnp.int32) + i % (cache_len - 32 - tokens)
    out, cache = adapter.forward(params, cache, tokens_BxT.astype(jnp.int32), slot_B,
                                 heads=heads, return_hidden=unembed != "logits")
    if unembed == "speculative":
      out = (jnp.argmax(adapter.unembed(params, out[:, :, 0]), -1).sum()
             + jnp.argmax(adapter.unembed(params, out[:, 0, 1:]), -1).sum())
    return cache, acc + jnp.sum(out).astype(jnp.float32)

  run = jax.jit(lambda p, c: jax.lax.fori_loop(0, passes, body, (c, jnp.float32(0)))[1])
  cache = adapter.init_cache(batch_size, cache_len, heads=heads)
  run(params, cache).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run(params, cache).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 1e6 * best / passes


def pass_costs(model, params, draft_heads: int, batch_size: int, **kwargs) -> dict[str, float]:
  """``pass_us`` of the parts of a decode pass, ``k = draft_heads`` (``kwargs``: its keywords):

  * ``plain``: a plain decode step (1 token, trunk + head 0, logits);
  * ``trunk_head0_1tok`` / ``trunk_head0_{k+1}tok``: trunk + head 0 on 1 / ``k + 1`` tokens,
    hidden states only (the cost of verifying more tokens);
  * ``blocks_{k+1}tok``: trunk + ``k + 1`` heads on ``k + 1`` tokens, hidden states only;
  * ``speculative``: that plus the unembedding of a speculative pass (head 0 at every position,
    the draft heads at one).
  """
  t = draft_heads + 1
  measure = functools.partial(pass_us, model, params, batch_size, **kwargs)
  return {"plain": measure(tokens=1, heads=1, unembed="logits"),
          "trunk_head0_1tok": measure(tokens=1, heads=1, unembed="hidden"),
          f"trunk_head0_{t}tok": measure(tokens=t, heads=1, unembed="hidden"),
          f"blocks_{t}tok": measure(tokens=t, heads=t, unembed="hidden"),
          "speculative": measure(tokens=t, heads=t, unembed="speculative")}


def main(argv: list[str]) -> dict:
  parser = argparse.ArgumentParser(prog="python -m wmtp_jax.bench decode", description=__doc__)
  parser.add_argument("--checkpoint", default="", help="converted checkpoint or training workdir")
  parser.add_argument("--train-steps", type=int, default=300)
  parser.add_argument("--n-layers", type=int, default=0,
                      help="trunk + head blocks of the trained model (0: the tiny preset's 8)")
  parser.add_argument("--dim", type=int, default=0, help="model width (0: the tiny preset's 128)")
  parser.add_argument("--pass-costs", action="store_true",
                      help="also time the parts of one decode pass (pass_costs)")
  parser.add_argument("--batch-sizes", default="1,8")
  parser.add_argument("--draft-heads", default="1,2,3")
  parser.add_argument("--n-prompts", type=int, default=16)
  parser.add_argument("--max-new-tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  report: dict = {"device": jax.devices()[0].device_kind, "n_devices": jax.device_count()}
  if args.checkpoint:
    model, params, tok = _load(args.checkpoint)
    directory = synthetic.cached_path()
    report["model"] = args.checkpoint
  else:
    started = time.perf_counter()
    shape = {k: v for k, v in (("n_layers", args.n_layers), ("dim", args.dim)) if v}
    model, params, tok, directory, loss = train_tiny(args.train_steps, **shape)
    report.update(model="tiny MTP preset trained on the synthetic task", model_overrides=shape,
                  train_steps=args.train_steps, train_loss=loss,
                  train_s=time.perf_counter() - started)
  prompts = synthetic_prompts(directory, tok, args.n_prompts)
  report.update(n_prompts=len(prompts), max_new_tokens=args.max_new_tokens,
                n_heads=getattr(model.cfg, "n_future_tokens", 1),
                n_trunk_layers=getattr(model.cfg, "n_trunk_layers", None), results=[])
  drafting = [k for k in map(int, args.draft_heads.split(",")) if k < report["n_heads"]]
  for batch_size in map(int, args.batch_sizes.split(",")):
    row = generation_speed(model, params, prompts, batch_size=batch_size, draft_heads=drafting,
                           repeats=args.repeats, max_new_tokens=args.max_new_tokens,
                           eos_id=tok.eos_token_id, pad_id=tok.pad_token_id or 0)
    if args.pass_costs and drafting:
      costs = pass_costs(model, params, max(drafting), batch_size)
      # With every draft accepted a pass yields k + 1 tokens: the speed-up can not exceed this.
      costs["speedup_bound_at_full_acceptance"] = (
          (max(drafting) + 1) * costs["plain"] / costs["speculative"])
      row["pass_us"] = costs
    report["results"].append(row)
  return report
