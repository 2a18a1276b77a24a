"""One interface for generation over the two model kinds: ``MTPTransformer`` (``n`` heads) and
``LlamaForCausalLM`` (one head): a KV-cache forward pass, the unembedding and the zero cache."""

import jax
import jax.numpy as jnp

from wmtp_jax.models import llama
from wmtp_jax.models.llama import LlamaForCausalLM
from wmtp_jax.models.mtp import MTPTransformer


class ModelAdapter:
  """One interface over ``MTPTransformer`` (``n`` heads) and ``LlamaForCausalLM`` (one head)."""

  def __init__(self, model):
    if isinstance(model, MTPTransformer):
      self.is_mtp, self.n_heads = True, model.cfg.n_future_tokens
      self.max_seq_len = model.cfg.max_seq_len
      self.unembedding_DxV = lambda params: params["output"]["kernel"]
    elif isinstance(model, LlamaForCausalLM):  # tied input/output embeddings included
      self.is_mtp, self.n_heads = False, 1
      self.max_seq_len = model.cfg.max_position_embeddings
      self.unembedding_DxV = llama.unembedding_DxV
    else:
      raise TypeError(f"generation needs an MTPTransformer or a LlamaForCausalLM, got "
                      f"{type(model).__name__}")
    self.model, self.vocab_size, self.dtype = model, model.cfg.vocab_size, model.cfg.dtype

  def _kwargs(self, heads: int) -> dict:
    if not self.is_mtp:
      if heads != 1:
        raise ValueError(f"a LlamaForCausalLM has one head, {heads} were asked for")
      return {}
    return {"heads": heads}

  def forward(self, params, cache, tokens_BxT, cache_index_B, *, heads: int,
              return_hidden: bool = False):
    """``(logits [B, T, heads, V] | hidden [B, T, heads, D], new cache)`` in KV-cache mode."""
    out, variables = self.model.apply(
        {"params": params, "cache": cache}, tokens_BxT, None, cache_index_B=cache_index_B,
        return_hidden=return_hidden, mutable=["cache"], **self._kwargs(heads))
    if not self.is_mtp:
      out = out[:, :, None]
    return out, variables["cache"]

  def unembed(self, params, hidden):
    """Logits of final-normed hidden states ``[..., D]`` (the model's own output projection)."""
    kernel_DxV = self.unembedding_DxV(params)
    return jnp.einsum("...d,dv->...v", hidden.astype(self.dtype), kernel_DxV.astype(self.dtype))

  def init_cache(self, batch_size: int, cache_len: int, *, heads: int):
    """Zero caches ``[B, cache_len, K, H]`` of every block that runs with ``heads`` heads."""
    def init():
      return self.model.init(jax.random.key(0), jnp.zeros((batch_size, cache_len), jnp.int32),
                             cache_index_B=jnp.zeros((batch_size,), jnp.int32),
                             **self._kwargs(heads))["cache"]
    shapes = jax.eval_shape(init)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def init_cache(model, batch_size: int, cache_len: int, *, heads: int = 1):
  """The zero KV cache (``cache`` collection) of ``model`` for ``batch_size`` rows of
  ``cache_len`` slots, for the trunk and the first ``heads`` heads."""
  return ModelAdapter(model).init_cache(batch_size, cache_len, heads=heads)
