"""Shared by the decoding tests (test_adapter, test_generator, test_speculative, test_sampling)
and test_eval: a small MTP model and a LLaMA model with random params, generators shared across
tests (equal shapes reuse the compiled functions), params whose heads agree, random prompts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.decoding import generator as gen
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

# One trunk block + four head blocks, grouped-query attention.
MTP_CFG = MTPConfig(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32,
                    ffn_dim_multiplier=1.0, rope_theta=500.0, n_future_tokens=4, max_seq_len=128)
LLAMA_CFG = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2,
                        max_position_embeddings=128, rope_theta=500.0)
EOS = 2


def model_and_params(kind: str):
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
def mtp_model():
  return model_and_params("mtp")


@functools.lru_cache(maxsize=None)
def shared_generator(draft_heads: int = 0) -> gen.Generator:
  """Shared across tests, so that equal shapes reuse the compiled functions."""
  return gen.Generator(mtp_model()[0], draft_heads=draft_heads)


def heads_agree(params):
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


def random_prompts(seed: int, lengths):
  rng = np.random.default_rng(seed)
  return [rng.integers(4, 97, size=n).tolist() for n in lengths]
