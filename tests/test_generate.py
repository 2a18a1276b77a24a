"""Generation: KV-cache decoding equals the full forward pass, greedy generation equals a naive
loop that re-runs the whole model every step, self-speculative greedy output equals plain greedy
output (1–3 draft heads, with drafts rejected and accepted), sampling, stop sequences, sharding."""

import functools
import os
import subprocess
import sys
import textwrap

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.decoding import generator as gen
from wmtp_jax.decoding.adapter import ModelAdapter
from wmtp_jax.decoding.sampling import Sampling, warp_probs
from wmtp_jax.eval import benchmarks
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

# One trunk block + four head blocks, grouped-query attention.
MTP_CFG = MTPConfig(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32,
                    ffn_dim_multiplier=1.0, rope_theta=500.0, n_future_tokens=4, max_seq_len=128)
LLAMA_CFG = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=128, rope_theta=500.0)
EOS = 2


def _model(kind: str):
  model = MTPTransformer(MTP_CFG) if kind == "mtp" else LlamaForCausalLM(LLAMA_CFG)
  return model, random_params(model, seed=1)


def random_params(model, seed: int):
  """Scaled random params drawn with numpy (``model.init`` costs seconds of XLA compilation)."""
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                        jnp.zeros((1, 8), jnp.int32))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [p.key for p in path]
    if names[-1] == "weight":  # RMSNorm
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = 1 if names[-1] == "embedding" else int(np.prod(leaf.shape[:2 if "wo" in names else 1]))
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.lru_cache(maxsize=None)
def _mtp():
  return _model("mtp")


@functools.lru_cache(maxsize=None)
def _generator(draft_heads: int = 0) -> gen.Generator:
  """Shared across tests, so that equal shapes reuse the compiled functions."""
  return gen.Generator(_mtp()[0], draft_heads=draft_heads)


def _heads_agree(params):
  """Heads 1…3 copy head 0 and every block is the identity (zero ``wo`` and ``w2``), with the
  output projection ``kernel[:, y] = embedding[σ(y)]``: the next token is then ``σ⁻¹(x_t)``, with
  σ the identity on even tokens and a cycle on odd ones. Drafts (head 0's guess of the next token,
  ``σ⁻¹(last)``) are accepted at even fixed points and rejected on the odd cycle."""
  params = jax.tree_util.tree_map(lambda x: x, params)
  for name in params:
    if name.startswith(("trunk_", "head_")):
      params[name]["attention"]["wo"]["kernel"] = jnp.zeros_like(
          params[name]["attention"]["wo"]["kernel"])
      params[name]["feed_forward"]["w2"]["kernel"] = jnp.zeros_like(
          params[name]["feed_forward"]["w2"]["kernel"])
  vocab = MTP_CFG.vocab_size
  sigma = np.arange(vocab)
  odd = sigma[1::2]
  sigma[1::2] = np.roll(odd, 1)
  params["output"]["kernel"] = params["tok_embeddings"]["embedding"][sigma].T
  return {**params, **{f"head_{k}": params["head_0"] for k in range(1, 4)}}


def _prompts(seed: int, lengths):
  rng = np.random.default_rng(seed)
  return [rng.integers(4, 97, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("kind", ["mtp", "llama"])
def test_kv_cache_logits_equal_full_forward(kind):
  """Chunks of 3 tokens (a speculative verify pass) and single tokens, rows advancing by
  different amounts (as after accepting 0–2 drafts: the rejected slots get overwritten), give
  the logits of the full forward pass over the whole sequence."""
  model, params = _mtp() if kind == "mtp" else _model(kind)
  seq = np.asarray(_prompts(0, [24, 24, 24]))
  full = np.asarray(jax.jit(model.apply)({"params": params}, seq))
  if kind == "llama":
    full = full[:, :, None]
  adapter = ModelAdapter(model)
  heads = adapter.n_heads
  cache = adapter.init_cache(3, 28, heads=heads)
  forward = jax.jit(functools.partial(adapter.forward, heads=heads))
  index = np.zeros(3, np.int32)
  for chunk, advance in [(3, (3, 3, 3)), (3, (3, 1, 2)), (1, (1, 1, 1)), (3, (1, 3, 2)),
                         (3, (3, 3, 3)), (1, (1, 1, 1)), (3, (2, 3, 1))]:
    tokens = np.stack([seq[b, i:i + chunk] for b, i in enumerate(index)])
    logits, cache = forward(params, cache, tokens, jnp.asarray(index))
    for b, i in enumerate(index):
      np.testing.assert_allclose(logits[b], full[b, i:i + chunk], rtol=1e-5, atol=1e-5)
    index += np.asarray(advance, np.int32)
  assert len(set(index.tolist())) == 3


NAIVE_WIDTH = 64


@functools.lru_cache(maxsize=None)
def _naive_next_token(model):
  @jax.jit
  def next_token(params, tokens, length):
    logits = model.apply({"params": params}, tokens[None])[0, length - 1]
    return jnp.argmax(logits[0] if logits.ndim == 2 else logits)
  return next_token


def _naive_greedy(model, params, prompt, max_new, eos_id):
  """Re-runs the full model on the whole (right-padded) sequence for every new token."""
  next_token = _naive_next_token(model)
  tokens, out = np.zeros(NAIVE_WIDTH, np.int32), []
  tokens[:len(prompt)] = prompt
  for i in range(max_new):
    token = int(next_token(params, tokens, len(prompt) + i))
    out.append(token)
    tokens[len(prompt) + i] = token
    if token == eos_id:
      break
  return out


@pytest.mark.parametrize("kind", ["mtp", "llama"])
def test_greedy_generation_equals_naive_full_forward_loop(kind):
  model, params = _mtp() if kind == "mtp" else _model(kind)
  prompts = _prompts(1, [5, 17, 9, 30, 12])
  max_new = 20
  # An EOS the model actually produces (prompt 1's 6th token) so that rows finish early.
  eos = _naive_greedy(model, params, prompts[1], max_new, eos_id=-1)[5]
  want = [_naive_greedy(model, params, p, max_new, eos) for p in prompts]
  generator = _generator() if kind == "mtp" else gen.Generator(model)
  # batch_size 4: one full batch and one with three dummy rows, in two prompt buckets.
  got = generator(params, prompts, max_new_tokens=max_new, eos_id=eos, batch_size=4,
                  buckets=(16, 32))
  assert got.tokens == want
  assert got.finished_by == ["eos" if w[-1] == eos else "length" for w in want]
  assert "eos" in got.finished_by
  again = generator(params, prompts[::-1], max_new_tokens=max_new, eos_id=eos, batch_size=4,
                    buckets=(16, 32), seed=5)
  assert again.tokens == want[::-1]  # greedy: independent of the order and the seed
  assert again.stats["compiles"] == 0


@pytest.mark.parametrize("draft_heads", [1, 2, 3])
def test_speculative_greedy_equals_plain_greedy(draft_heads):
  model, params = _mtp()
  prompts = _prompts(2, [6, 13, 25, 9, 18])
  kwargs = dict(max_new_tokens=20, eos_id=EOS, batch_size=4, buckets=(16, 32))
  plain, speculative = _generator(), _generator(draft_heads)
  acceptance = {}
  for name, p in (("random", params), ("heads_agree", _heads_agree(params))):
    want = plain(p, prompts, **kwargs)
    got = speculative(p, prompts, **kwargs)
    assert got.tokens == want.tokens, name
    assert got.finished_by == want.finished_by
    acceptance[name] = got.stats["mean_accepted_length"]
    assert got.stats["decode_steps"] <= want.stats["decode_steps"]
  print(f"draft_heads={draft_heads}: mean accepted length {acceptance}")
  assert acceptance["random"] >= 1.0
  assert acceptance["heads_agree"] > 1.3  # drafts are accepted, several tokens per pass


def test_sampling_is_seeded_and_top_p_filters():
  """Plain sampling runs in tests/test_eval.py (evaluate_problems with temperature)."""
  model, params = _mtp()
  prompts = _prompts(3, [8, 12])
  generator, speculative = _generator(), _generator(2)
  sampling = Sampling(temperature=1.0, top_p=0.9)
  kwargs = dict(max_new_tokens=20, eos_id=EOS, batch_size=4, buckets=(16, 32))
  agree = _heads_agree(params)
  a = speculative(params, prompts, sampling=sampling, seed=1, **kwargs)
  b = speculative(params, prompts, sampling=sampling, seed=1, **kwargs)
  c = speculative(params, prompts, sampling=sampling, seed=2, **kwargs)
  assert a.tokens == b.tokens and a.tokens != c.tokens
  assert all(0 <= t < MTP_CFG.vocab_size for row in a.tokens for t in row)
  # warp_probs against a direct numpy nucleus filter.
  logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32) * 3
  got = np.asarray(warp_probs(jnp.asarray(logits), Sampling(0.7, 0.8)))
  for row, probs in zip(logits, got):
    p = np.exp(row / 0.7 - np.max(row / 0.7))
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[:np.searchsorted(np.cumsum(p[order]), 0.8) + 1]
    want = np.zeros_like(p)
    want[keep] = p[keep] / p[keep].sum()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
  # Speculative sampling: near-greedy sampling (top-p keeps only the most likely token) goes
  # through the acceptance ratios and the residual distribution and must give the greedy tokens.
  near_greedy = Sampling(temperature=1.0, top_p=1e-9)
  got = speculative(agree, prompts, sampling=near_greedy, **kwargs)
  assert got.stats["compiles"] == 0  # temperature and top_p are not compiled in
  assert got.tokens == generator(agree, prompts, **kwargs).tokens
  assert got.stats["mean_accepted_length"] > 1.3


def test_stop_sequences_finish_rows_on_the_host():
  model, params = _mtp()
  prompts = _prompts(4, [8, 12])
  decode = lambda ids: "".join(chr(65 + i % 26) for i in ids)
  kwargs = dict(max_new_tokens=20, eos_id=-1, batch_size=4, buckets=(16, 32))
  full = _generator()(params, prompts, **kwargs)
  stop = decode(full.tokens[0][3:5])  # appears in row 0 after 5 tokens
  got = _generator()(params, prompts, stop=[stop], decode_fn=decode, stop_check_every=8,
                     **kwargs)
  assert got.finished_by[0] == "stop"
  # The first token comes from the prefill; the row finished at the first check (8 steps).
  assert len(got.tokens[0]) == 9
  assert got.tokens[0] == full.tokens[0][:9]
  assert benchmarks.truncate_at_stop(decode(got.tokens[0]), [stop]) == decode(full.tokens[0][:3])
  with pytest.raises(ValueError, match="decode_fn"):
    _generator()(params, prompts, max_new_tokens=4, eos_id=-1, stop=["x"])
  with pytest.raises(ValueError, match="draft_heads"):
    gen.Generator(LlamaForCausalLM(LLAMA_CFG), draft_heads=1)


def test_sharded_generation_matches_single_device(tmp_path):
  """On 4 fake CPU devices (data=2, fsdp=2), params sharded by the logical rules, the batch over
  ``data`` × ``fsdp``: the same tokens as on one device."""
  model, params = _mtp()
  prompts = _prompts(5, [6, 13, 25, 9])
  kwargs = dict(max_new_tokens=20, eos_id=EOS, batch_size=4, buckets=(16, 32))
  want = _generator()(params, prompts, **kwargs).tokens
  np.savez(tmp_path / "params.npz", **{"/".join(k): np.asarray(v) for k, v in
                                        flax.traverse_util.flatten_dict(params).items()})
  script = textwrap.dedent(f"""
      import jax, jax.numpy as jnp, numpy as np, flax
      jax.config.update("jax_num_cpu_devices", 4)
      from wmtp_jax.decoding import generator as gen
      from wmtp_jax.training import mesh as mesh_lib
      from wmtp_jax.models.mtp import MTPConfig, MTPTransformer
      model = MTPTransformer(MTPConfig(**{MTP_CFG.__dict__!r}))
      flat = np.load({str(tmp_path / "params.npz")!r})
      params = flax.traverse_util.unflatten_dict({{tuple(k.split("/")): v for k, v in flat.items()}})
      boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
      mesh = mesh_lib.make_mesh({{"data": 2, "fsdp": 2, "tensor": 1}})
      rules = mesh_lib.DEFAULT_RULES
      sharded = jax.device_put(params, mesh_lib.shardings_for(boxed, mesh, rules)["params"])
      assert not sharded["head_0"]["attention"]["wq"]["kernel"].sharding.is_fully_replicated
      got = gen.Generator(model, mesh=mesh, rules=rules)(sharded, {prompts!r}, **{kwargs!r})
      print(got.tokens)
      """)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == str(want)
