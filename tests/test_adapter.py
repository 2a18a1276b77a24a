"""The KV-cache interface of the models (``wmtp_jax.decoding.adapter``): decoding through the
cache equals the full forward pass."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decoding_helpers import LLAMA_CFG, model_and_params, mtp_model, random_params, random_prompts
from wmtp_jax.decoding.adapter import ModelAdapter
from wmtp_jax.models.llama import LlamaForCausalLM


@pytest.mark.parametrize("kind", ["mtp", "llama"])
def test_kv_cache_logits_equal_full_forward(kind):
  """Chunks of 3 tokens (a speculative verify pass) and single tokens, rows advancing by
  different amounts (as after accepting 0–2 drafts: the rejected slots get overwritten), give
  the logits of the full forward pass over the whole sequence."""
  model, params = mtp_model() if kind == "mtp" else model_and_params(kind)
  seq = np.asarray(random_prompts(0, [24, 24, 24]))
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


@pytest.mark.parametrize("tied", [False, True])
def test_unembed_of_hidden_states_gives_the_logits(tied):
  """``unembed`` of the KV-cache pass's hidden states equals its logits for a LLaMA with its own
  ``lm_head`` and for one with tied input/output embeddings (no ``lm_head``: LLaMA-3.2 1B/3B)."""
  model = LlamaForCausalLM(dataclasses.replace(LLAMA_CFG, tie_word_embeddings=tied))
  params = random_params(model, seed=3)
  assert ("lm_head" in params) != tied
  adapter = ModelAdapter(model)
  seq = np.asarray(random_prompts(1, [8, 8]))
  cache = adapter.init_cache(2, 8, heads=1)
  index = jnp.zeros(2, jnp.int32)
  logits, _ = adapter.forward(params, cache, seq, index, heads=1)
  hidden, _ = adapter.forward(params, cache, seq, index, heads=1, return_hidden=True)
  np.testing.assert_allclose(adapter.unembed(params, hidden), logits, rtol=1e-5, atol=1e-5)
  full = model.apply({"params": params}, seq)
  np.testing.assert_allclose(logits[:, :, 0], full, rtol=1e-5, atol=1e-5)
