"""Autoregressive generation with a preallocated KV cache: a jitted prefill, then a jitted
``lax.while_loop`` of decode steps.

Works on an ``MTPTransformer`` (next-token head 0; with ``draft_heads > 0`` the other heads draft
and head 0 verifies, see ``wmtp_jax.decoding.speculative``) and on a ``LlamaForCausalLM``
(``wmtp_jax.decoding.adapter``).

Shapes are static so the number of compilations is bounded: prompts are sorted by length, cut into
batches of exactly ``batch_size`` rows (the last one padded with dummy rows) and right-padded to a
**bucket** length ``P`` (the smallest of ``buckets`` that fits the batch's longest prompt). The
cache holds ``C = P + max_new_tokens + draft_heads`` slots. Prefill and decode compile once per
``(batch_size, P)``. The cache layout and the decode state are described in
``wmtp_jax.decoding.state``.

Sampling (``wmtp_jax.decoding.sampling``): greedy (``temperature == 0``; deterministic), or
temperature + nucleus (top-p). Stop sequences (strings) are checked on the host between chunks of
``stop_check_every`` decode steps; the texts are cut at the first stop sequence afterwards
(``wmtp_jax.eval.benchmarks.truncate_at_stop``).
"""

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.decoding import speculative
from wmtp_jax.decoding.adapter import ModelAdapter
from wmtp_jax.decoding.sampling import Sampling, sample_token
from wmtp_jax.decoding.state import DecodeSpec, append_tokens, initial_state

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


# ----------------------------------------------------------------------------------- the steps


def _prefill(adapter: ModelAdapter, spec: DecodeSpec, params, prompts_BxP, lengths_B, n_rows, rng,
             temperature, top_p, eos_id):
  """Runs the prompts, samples the first token (and drafts); returns the decode state. Rows
  ``n_rows …`` are dummies (done from the start)."""
  batch = prompts_BxP.shape[0]
  cache = adapter.init_cache(batch, spec.cache_len, heads=spec.heads)
  hidden_BxPxhxD, cache = adapter.forward(params, cache, prompts_BxP,
                                          jnp.zeros((batch,), jnp.int32), heads=spec.heads,
                                          return_hidden=True)
  last_B = lengths_B - 1
  last_hidden_BxhxD = jnp.take_along_axis(hidden_BxPxhxD, last_B[:, None, None, None], 1)[:, 0]
  logits_BxhxV = adapter.unembed(params, last_hidden_BxhxD)
  rng, first_rng, draft_rng = jax.random.split(rng, 3)
  state = initial_state(spec, cache, lengths_B, rng, temperature, top_p, eos_id)
  first_B = sample_token(first_rng, logits_BxhxV[:, 0], spec.knobs(state))
  real_B = jnp.arange(batch) < n_rows
  out, n_gen, done, _ = append_tokens(state, first_B[:, None], jnp.ones((batch,), jnp.int32),
                                      real_B, spec.max_new)
  state.update(out=out, n_gen=n_gen, done=done | ~real_B, last=first_B)
  if spec.draft_heads:
    state.update(speculative.draft(spec.knobs(state), logits_BxhxV[:, 1:], draft_rng))
  return state


def _plain_step(adapter: ModelAdapter, spec: DecodeSpec, params, state):
  """One token per active row from head 0."""
  active_B = ~state["done"]
  slot_B = state["lengths"] + state["n_gen"] - 1
  logits_BxTxhxV, cache = adapter.forward(params, state["cache"], state["last"][:, None], slot_B,
                                          heads=1)
  rng, step_rng = jax.random.split(state["rng"])
  next_B = sample_token(step_rng, logits_BxTxhxV[:, 0, 0], spec.knobs(state))
  out, n_gen, done, count = append_tokens(state, next_B[:, None], jnp.ones_like(next_B),
                                          active_B, spec.max_new)
  return {**state, "cache": cache, "out": out, "n_gen": n_gen, "done": done, "rng": rng,
          "last": jnp.where(active_B, next_B, state["last"]), "steps": state["steps"] + 1,
          "row_steps": state["row_steps"] + active_B, "row_tokens": state["row_tokens"] + count}


def _decode(adapter: ModelAdapter, spec: DecodeSpec, params, state, until_steps):
  """Decode steps until every row is done or ``steps == until_steps``."""
  if spec.draft_heads:
    step = functools.partial(speculative.step, adapter, spec, params)
  else:
    step = functools.partial(_plain_step, adapter, spec, params)
  cond = lambda s: jnp.any(~s["done"]) & (s["steps"] < until_steps)
  return jax.lax.while_loop(cond, step, state)


# ----------------------------------------------------------------------------------- the API


@dataclasses.dataclass
class Generation:
  """Output of ``generate``: per prompt, in input order.

  Attributes:
    tokens: the generated token ids (up to and including EOS when one was generated).
    finished_by: ``"eos"``, ``"stop"`` (a stop sequence) or ``"length"`` per prompt.
    stats: ``tokens`` generated, ``seconds`` (wall, compilation included), ``tokens_per_s``,
      ``decode_steps`` (model calls after prefill, summed over rows), ``mean_accepted_length``
      (tokens per model call and row; 1 for plain decoding), ``compiles`` (prefill and decode
      functions compiled by this call).
  """
  tokens: list[list[int]]
  finished_by: list[str]
  stats: dict[str, float]


class Generator:
  """Jitted generation for one model; compiled functions are reused across calls.

  Args:
    model: ``MTPTransformer`` or ``LlamaForCausalLM``.
    draft_heads: 0 for plain decoding with head 0; ``k ≥ 1`` for self-speculative decoding with
      heads ``1 … k`` drafting (MTP only, ``k < n_future_tokens``).
    mesh, rules: run under this mesh and logical-axis rules (the params are expected to be laid
      out on the mesh already); the batch is split over the ``batch`` axis.
  """

  def __init__(self, model, *, draft_heads: int = 0, mesh=None, rules=()):
    self.adapter = ModelAdapter(model)
    if not 0 <= draft_heads < self.adapter.n_heads:
      raise ValueError(f"draft_heads={draft_heads}: the model has {self.adapter.n_heads} head(s), "
                       f"so at most {self.adapter.n_heads - 1} can draft")
    self.draft_heads, self.mesh, self.rules = draft_heads, mesh, tuple(rules)
    self._jitted: dict[DecodeSpec, tuple[Any, Any]] = {}
    self._shapes: set = set()
    self._warned_length = False

  def _functions(self, spec: DecodeSpec):
    if spec not in self._jitted:
      self._jitted[spec] = (
          jax.jit(functools.partial(_prefill, self.adapter, spec)),
          jax.jit(functools.partial(_decode, self.adapter, spec), donate_argnums=(1,)))
    return self._jitted[spec]

  def _context(self) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
      stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def generate(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_id: int,
               sampling: Sampling = Sampling(), batch_size: int = 16, seed: int = 0,
               pad_id: int = 0, stop: Sequence[str] = (), decode_fn=None,
               stop_check_every: int = 16, buckets: Sequence[int] = DEFAULT_BUCKETS
               ) -> Generation:
    """Generates a continuation of every prompt (lists of token ids, BOS included if wanted).

    ``params``: the model's params tree (LoRA merged).

    ``stop`` sequences need ``decode_fn(ids) -> str``; rows are finished on the host when one
    appears (checked every ``stop_check_every`` steps). Greedy output does not depend on
    ``batch_size``, the order of the prompts or ``seed``.
    """
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be ≥ 1")
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size} must be ≥ 1")
    if stop and decode_fn is None:
      raise ValueError("stop sequences need decode_fn")
    prompts = [list(map(int, p)) for p in prompts]
    if any(not p for p in prompts):
      raise ValueError("every prompt needs at least one token (e.g. BOS)")
    # One cache length per call (the longest prompt's bucket): decode compiles once, prefill once
    # per bucket.
    longest = _bucket(max(map(len, prompts)), buckets)
    spec = DecodeSpec(sampling.greedy, sampling.nucleus, int(max_new_tokens), self.draft_heads,
                 longest + int(max_new_tokens) + self.draft_heads)
    self._check_length(max(map(len, prompts)) + int(max_new_tokens))
    prefill, decode = self._functions(spec)
    params = nn.meta.unbox(params)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    tokens: list[list[int]] = [[] for _ in prompts]
    finished_by = ["length"] * len(prompts)
    totals = dict(tokens=0, decode_steps=0, decode_tokens=0, compiles=0)
    rng = jax.random.key(seed)
    start = time.perf_counter()
    with self._context():
      for batch_no, first in enumerate(range(0, len(order), batch_size)):
        rows = order[first:first + batch_size]
        lengths = np.asarray([len(prompts[i]) for i in rows]
                             + [1] * (batch_size - len(rows)), np.int32)
        prompt_len = _bucket(int(lengths.max()), buckets)
        batch = np.full((batch_size, prompt_len), pad_id, np.int32)
        for r, i in enumerate(rows):
          batch[r, :len(prompts[i])] = prompts[i]
        for key in (("prefill", batch_size, prompt_len, spec), ("decode", batch_size, spec)):
          totals["compiles"] += key not in self._shapes
          self._shapes.add(key)
        state = prefill(params, batch, lengths, len(rows), jax.random.fold_in(rng, batch_no),
                        sampling.temperature, sampling.top_p, eos_id)
        chunk = stop_check_every if stop else max_new_tokens
        stopped = np.zeros(batch_size, bool)
        until = 0
        while True:
          until += chunk
          state = decode(params, state, until)
          done = np.array(state["done"])
          if stop:
            out, n_gen = np.asarray(state["out"]), np.asarray(state["n_gen"])
            for r in range(len(rows)):
              if not done[r] and any(s in decode_fn(out[r, :n_gen[r]].tolist()) for s in stop):
                done[r] = stopped[r] = True
            state["done"] = jnp.asarray(done)
          if done.all():
            break
        out, n_gen = np.asarray(state["out"]), np.asarray(state["n_gen"])
        row_steps, row_tokens = np.asarray(state["row_steps"]), np.asarray(state["row_tokens"])
        for r, i in enumerate(rows):
          tokens[i] = out[r, :n_gen[r]].tolist()
          finished_by[i] = ("stop" if stopped[r] else
                            "eos" if tokens[i] and tokens[i][-1] == eos_id else "length")
        totals["tokens"] += int(n_gen[:len(rows)].sum())
        totals["decode_steps"] += int(row_steps[:len(rows)].sum())
        totals["decode_tokens"] += int(row_tokens[:len(rows)].sum())
    seconds = time.perf_counter() - start
    stats = dict(tokens=totals["tokens"], seconds=seconds,
                 tokens_per_s=totals["tokens"] / max(seconds, 1e-9),
                 decode_steps=totals["decode_steps"],
                 mean_accepted_length=(totals["decode_tokens"] / totals["decode_steps"]
                                       if totals["decode_steps"] else float("nan")),
                 compiles=totals["compiles"])
    return Generation(tokens=tokens, finished_by=finished_by, stats=stats)

  def _check_length(self, needed: int) -> None:
    if needed > self.adapter.max_seq_len and not self._warned_length:
      self._warned_length = True
      log.warning("generation reaches position %d, past the model's max_seq_len %d", needed,
                  self.adapter.max_seq_len)

  __call__ = generate


def generate(model, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             eos_id: int, temperature: float = 0.0, top_p: float = 1.0, draft_heads: int = 0,
             **kwargs) -> Generation:
  """One-shot ``Generator(model, draft_heads=…)(params, prompts, …)`` (see
  ``Generator.generate``)."""
  generator = Generator(model, draft_heads=draft_heads)
  return generator(params, prompts, max_new_tokens=max_new_tokens, eos_id=eos_id,
                   sampling=Sampling(temperature, top_p), **kwargs)


def _bucket(length: int, buckets: Sequence[int]) -> int:
  fitting = [b for b in buckets if b >= length]
  if not fitting:
    raise ValueError(f"a prompt of {length} tokens is longer than the largest bucket "
                     f"{max(buckets)}")
  return min(fitting)

