"""Meta's multi-token prediction transformer (``7B_1T_4``) in Flax, with Meta's exact wiring.

``n_layers`` counts the trunk blocks plus all ``n_future`` head blocks
(``n_trunk_layers = n_layers − n_future``; ``7B_1T_4``: 28 + 4 = 32):

    trunk  = blocks 0 … n_layers − n_future − 1           (Meta: ``layers[:-1]``)
    head 0 = the next-token head block                      (Meta: ``layers[-1]``)
    head k = head block k, k = 1 … n_future − 1             (Meta: ``extra_heads[k-1]``)

so Meta's ``layers`` holds ``n_layers − n_future + 1`` blocks and ``extra_heads`` ``n_future − 1``.

Every head block reads the **same** trunk output (parallel, not chained); the head outputs are
stacked on axis −2, pass through **one shared** final RMSNorm and **one shared** untied output
projection: ``logits[b, t, k]`` (``[B, S, n, V]``) predicts ``x_{t+1+k}``.

Parameter tree (Flax names; ``wmtp_jax.checkpoints.layouts`` maps Meta's state dict onto
it): ``tok_embeddings/embedding [V, D]``, ``trunk_{i}/…`` (with ``scan_layers``: one
``trunk/…`` ``[n_trunk_layers, …]``), ``head_{k}/…`` (``layers.Block``), ``norm/weight [D]``,
``output/kernel [D, V]``, and with ``value_head`` set ``value_head/…`` (``llama.ValueHead`` on
the final-normed trunk output: the shared-head WMTP variant, DESIGN §3).
"""

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from wmtp_jax.models import layers, strict
from wmtp_jax.models.llama import VALUE_HEADS, ValueHead


@dataclasses.dataclass(frozen=True)
class MTPConfig:
  """Fields named as in Meta's ``params.json`` (so that file loads directly) plus numerics.

  ``max_seq_len`` is not in Meta's file; 2048 is the usual default. ``remat``: rematerialisation
  of the blocks in the backward pass (``layers.block_class``), a memory lever of training.
  ``scan_layers``: run the trunk blocks as one ``nn.scan`` loop (``layers.run_blocks``; the
  heads stay separate blocks), which bounds compile time in the depth; the trunk params are then
  one subtree ``trunk/…`` ``[n_trunk_layers, …]`` instead of ``trunk_{i}/…`` (checkpoints on disk
  keep the per-layer layout, ``wmtp_jax.models.scan_layout``). Outputs are the same.
  ``train_heads``: how many of the heads the policy objectives train and weight (the first
  ``train_heads``; 0 = all ``n_future_tokens``), for the horizon ablation. The model always has,
  and by default runs, all heads; the objectives call it with ``heads=train_heads``, so the heads
  beyond are not computed and get no gradient.
  """
  dim: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int | None = None
  vocab_size: int = 32000
  multiple_of: int = 256
  ffn_dim_multiplier: float | None = None
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  n_future_tokens: int = 1
  max_seq_len: int = 2048
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False
  value_head: str = ""  # "" (none) or a ``llama.VALUE_HEADS`` kind on the trunk output
  value_head_dropout: float = 0.0
  value_head_bias_init: float = 0.0
  train_heads: int = 0

  def __post_init__(self):
    layers.block_class(self.remat)  # validates the name
    if self.value_head and self.value_head not in VALUE_HEADS:
      raise ValueError(f"value_head={self.value_head!r}: expected '' or one of {VALUE_HEADS}")
    if not 1 <= self.n_future_tokens <= self.n_layers:
      raise ValueError(f"n_future_tokens={self.n_future_tokens} must be in [1, n_layers="
                       f"{self.n_layers}]")
    if not 0 <= self.train_heads <= self.n_future_tokens:
      raise ValueError(f"train_heads={self.train_heads} (config.model.train_heads) must be in "
                       f"[0, n_future_tokens={self.n_future_tokens}]; 0 trains all heads")
    self.block  # validates the block shapes

  @property
  def n_trunk_layers(self) -> int:
    return self.n_layers - self.n_future_tokens

  @property
  def block(self) -> layers.BlockConfig:
    return layers.BlockConfig(
        dim=self.dim, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads or self.n_heads,
        ffn_hidden=layers.meta_ffn_hidden(self.dim, self.multiple_of, self.ffn_dim_multiplier),
        norm_eps=self.norm_eps, rope_theta=self.rope_theta, dtype=self.dtype,
        param_dtype=self.param_dtype)

  @classmethod
  def from_params_json(cls, path: str | os.PathLike, **overrides: Any) -> "MTPConfig":
    """Read Meta's ``params.json``; an unknown key is an error naming the file and the key."""
    with open(path) as f:
      params = json.load(f)
    return strict.from_dict(cls, {**params, **overrides}, where=str(path))


class MTPTransformer(nn.Module):
  """Shared trunk + ``n_future_tokens`` parallel head blocks + shared norm and unembedding."""
  cfg: MTPConfig

  @nn.compact
  def __call__(self, tokens_BxS, attention_mask_BxS=None, *, positions_BxS=None,
               heads: int | None = None, return_hidden: bool = False,
               return_trunk_hidden: bool = False, return_values: bool = False,
               deterministic: bool = True, cache_index_B=None):
    """Run the model.

    Args:
      tokens_BxS: int token ids ``[B, S]``.
      attention_mask_BxS: 1 for real tokens, 0 for (right) padding; default all ones.
      positions_BxS: RoPE positions ``[B, S]``; default ``0 … S−1``.
      heads: run only the first ``heads`` heads (``1`` = next-token only); default all.
      return_hidden: return the final-normed per-head hidden states ``[B, S, n, D]`` instead of
        logits (for the memory-efficient loss, which multiplies by ``output/kernel`` blockwise).
      return_trunk_hidden: also return the final-normed trunk output ``[B, S, D]`` (the input of a
        shared value head).
      return_values: also return the shared value head's ``V [B, S]`` (fp32) on that trunk output
        (requires ``cfg.value_head``); ``V[b, t]`` values the state after ``x_0 … x_t``.
      deterministic: no dropout in the value head (pass ``False`` with a ``dropout`` rng to train).
      cache_index_B: KV-cache mode (generation; ``layers.Attention``): int ``[B]``, the cache slot
        of each row's first token. ``tokens_BxS`` are then new tokens written into the ``cache``
        collection (apply with ``mutable=["cache"]``) of every block that runs (the trunk and the
        first ``heads`` heads), ``attention_mask_BxS`` is an optional key mask over the cache slots
        and ``positions_BxS`` default to the slots (``layers.prepare_inputs``).
        ``wmtp_jax.decoding`` builds the cache.

    Returns:
      ``logits [B, S, n, V]`` (or hidden ``[B, S, n, D]``), and with ``return_trunk_hidden`` a pair
      ``(out, trunk_hidden [B, S, D])``, with ``return_values`` ``(out, values [B, S])`` (or the
      triple ``(out, trunk_hidden, values)`` with both). ``out[:, t, k]`` belongs to target
      ``x_{t+1+k}``.

    Initialise with the defaults (all heads, logits) so that every parameter is created.
    """
    cfg, block = self.cfg, self.cfg.block
    n = cfg.n_future_tokens if heads is None else heads
    if not 1 <= n <= cfg.n_future_tokens:
      raise ValueError(f"heads={heads} must be in [1, n_future_tokens={cfg.n_future_tokens}]")
    attention_mask_BxS, cos_BxSxH, sin_BxSxH = layers.prepare_inputs(
        tokens_BxS, attention_mask_BxS, positions_BxS, cache_index_B, block)
    x_BxSxD = layers.Embed(cfg.vocab_size, cfg.dim, cfg.dtype, cfg.param_dtype,
                           name="tok_embeddings")(tokens_BxS)
    x_BxSxD = layers.run_blocks(x_BxSxD, cos_BxSxH, sin_BxSxH, attention_mask_BxS, cache_index_B,
                                cfg=block, remat=cfg.remat, scan=cfg.scan_layers,
                                n_blocks=cfg.n_trunk_layers, name="trunk")
    block_cls = layers.block_class(cfg.remat)
    heads_BxSxnxD = jnp.stack(
        [block_cls(block, name=f"head_{k}")(x_BxSxD, cos_BxSxH, sin_BxSxH, attention_mask_BxS,
                                            cache_index_B)
         for k in range(n)], axis=-2)
    norm = layers.RMSNorm(cfg.norm_eps, cfg.param_dtype, name="norm")
    hidden_BxSxnxD = nn.with_logical_constraint(
        norm(heads_BxSxnxD), ("batch", "length", "future", "embed"))
    if return_hidden:
      out = hidden_BxSxnxD
    else:
      out = nn.with_logical_constraint(
          layers.Unembed(cfg.vocab_size, cfg.dtype, cfg.param_dtype, name="output")(hidden_BxSxnxD),
          ("batch", "length", "future", "vocab"))
    if return_values and not cfg.value_head:
      raise ValueError("return_values=True needs a model with a value head (cfg.value_head)")
    extra = (norm(x_BxSxD),) if return_trunk_hidden else ()
    if cfg.value_head and (return_values or self.is_initializing()):
      values_BxS = ValueHead(cfg.value_head, cfg.value_head_dropout, cfg.value_head_bias_init,
                             name="value_head")(norm(x_BxSxD), deterministic=deterministic)
      extra += (values_BxS,) if return_values else ()
    return (out, *extra) if extra else out
