"""Generation (``wmtp_jax.decoding.generator``): greedy generation equals a naive loop that
re-runs the whole model every step, stop sequences, sharding."""

import functools
import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_helpers import (EOS, LLAMA_CFG, MTP_CFG, model_and_params, mtp_model,
                              random_prompts, shared_generator)
from wmtp_jax.decoding import generator as gen
from wmtp_jax.eval.prompts import truncate_at_stop
from wmtp_jax.models.llama import LlamaForCausalLM


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
  model, params = mtp_model() if kind == "mtp" else model_and_params(kind)
  prompts = random_prompts(1, [5, 17, 9, 30, 12])
  max_new = 20
  # An EOS the model actually produces (prompt 1's 6th token) so that rows finish early.
  eos = _naive_greedy(model, params, prompts[1], max_new, eos_id=-1)[5]
  want = [_naive_greedy(model, params, p, max_new, eos) for p in prompts]
  generator = shared_generator() if kind == "mtp" else gen.Generator(model)
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


def test_stop_sequences_finish_rows_on_the_host():
  model, params = mtp_model()
  prompts = random_prompts(4, [8, 12])
  decode = lambda ids: "".join(chr(65 + i % 26) for i in ids)
  kwargs = dict(max_new_tokens=20, eos_id=-1, batch_size=4, buckets=(16, 32))
  full = shared_generator()(params, prompts, **kwargs)
  stop = decode(full.tokens[0][3:5])  # appears in row 0 after 5 tokens
  got = shared_generator()(params, prompts, stop=[stop], decode_fn=decode, stop_check_every=8,
                           **kwargs)
  assert got.finished_by[0] == "stop"
  # The first token comes from the prefill; the row finished at the first check (8 steps).
  assert len(got.tokens[0]) == 9
  assert got.tokens[0] == full.tokens[0][:9]
  assert truncate_at_stop(decode(got.tokens[0]), [stop]) == decode(full.tokens[0][:3])
  with pytest.raises(ValueError, match="decode_fn"):
    shared_generator()(params, prompts, max_new_tokens=4, eos_id=-1, stop=["x"])
  with pytest.raises(ValueError, match="draft_heads"):
    gen.Generator(LlamaForCausalLM(LLAMA_CFG), draft_heads=1)


def test_sharded_generation_matches_single_device(tmp_path):
  """On 4 fake CPU devices (data=2, fsdp=2), params sharded by the logical rules, the batch over
  ``data`` × ``fsdp``: the same tokens as on one device."""
  model, params = mtp_model()
  prompts = random_prompts(5, [6, 13, 25, 9])
  kwargs = dict(max_new_tokens=20, eos_id=EOS, batch_size=4, buckets=(16, 32))
  want = shared_generator()(params, prompts, **kwargs).tokens
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
