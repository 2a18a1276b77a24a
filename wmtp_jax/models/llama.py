"""Plain LLaMA (Hugging Face-style config): the reference model and the value (critic) model.

Parameter tree (Flax names; ``wmtp_jax.checkpoints.layouts`` maps a HF ``LlamaForCausalLM``
state dict onto it): ``model/embed_tokens/embedding [V, D]``, ``model/layers_{i}/…``
(``layers.Block``; with ``scan_layers`` one ``model/layers/…`` ``[num_hidden_layers, …]``),
``model/norm/weight [D]``, and ``lm_head/kernel [D, V]`` (``LlamaForCausalLM``; none with
``tie_word_embeddings``, whose logits use the embedding table) or ``value_head/…``
(``ValueModel``).

``ValueModel`` output ``V[b, t]`` is the value of the state after reading ``x_0 … x_t``: the value
head applied to the final-normed hidden state at position ``t`` (DESIGN §2); with
``value_inputs="hidden_logprob"`` plus ``w · log p(x_t | x_<t)``, the model's own language-model
log-probability of the token just read (``lm_head`` kept; 0 at ``t = 0``) times a learned scalar
``value_head/logprob_weight`` (starts at 0). A shallow backbone's hidden state at ``t`` encodes
its prediction of ``x_{t+1}``, not whether ``x_t`` was the expected token; the log-probability
carries exactly that, so a value that drops at an unexpected token is one weight away.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wmtp_jax.models import layers, strict

VALUE_HEADS = ("linear", "sigmoid", "mlp")
VALUE_INPUTS = ("hidden", "hidden_logprob")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Fields named as in a Hugging Face ``LlamaConfig`` plus numerics and the value head.

  ``value_head``: ``linear`` (h→1 with bias), ``sigmoid`` (h→1→σ) or ``mlp``
  (h→h/4→GELU→h/8→GELU→1, dropout after each GELU); the last layer's kernel starts at zero
  (all three, as the reference), so a fresh head outputs ``value_head_bias_init`` (σ of it).
  ``value_head_bias_init`` sets the bias of the last value layer (e.g. 0.5, the prior success rate).
  ``rope_scaling``: ``None`` or a ``layers.RopeScaling`` (given as the dict of a HF
  ``config.json``, e.g. LLaMA-3.1's ``{"rope_type": "llama3", "factor": 8.0, …}``).
  ``tie_word_embeddings``: the logits use the embedding table ``[V, D]``, no ``lm_head``
  (LLaMA-3.2 1B / 3B).
  ``value_inputs`` (``ValueModel`` only): ``hidden`` (the value head reads the hidden state) or
  ``hidden_logprob`` (plus the scaled log-probability of the token read: module docstring).
  """
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None
  max_position_embeddings: int = 4096
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: layers.RopeScaling | None = None
  tie_word_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  value_head: str = "linear"
  value_head_dropout: float = 0.1
  value_head_bias_init: float = 0.0
  value_inputs: str = "hidden"
  remat: str = "none"  # rematerialisation of the blocks (``layers.block_class``)
  scan_layers: bool = False  # blocks as one ``nn.scan`` loop (``layers.run_blocks``), as in MTP

  def __post_init__(self):
    scaling = self.rope_scaling  # a dict as in a config.json, or a ConfigDict
    scaling = scaling.to_dict() if hasattr(scaling, "to_dict") else scaling
    if isinstance(scaling, Mapping):
      object.__setattr__(self, "rope_scaling", strict.from_dict(
          layers.RopeScaling, dict(scaling), where="LlamaConfig.rope_scaling"))
    layers.block_class(self.remat)  # validates the name
    if self.value_head not in VALUE_HEADS:
      raise ValueError(f"value_head={self.value_head!r}: expected one of {VALUE_HEADS}")
    if self.value_inputs not in VALUE_INPUTS:
      raise ValueError(f"value_inputs={self.value_inputs!r}: expected one of {VALUE_INPUTS}")
    self.block  # validates the block shapes

  @property
  def block(self) -> layers.BlockConfig:
    return layers.BlockConfig(
        dim=self.hidden_size, n_heads=self.num_attention_heads,
        n_kv_heads=self.num_key_value_heads or self.num_attention_heads,
        ffn_hidden=self.intermediate_size, norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
        rope_scaling=self.rope_scaling, dtype=self.dtype, param_dtype=self.param_dtype)

  @classmethod
  def from_hf_config(cls, path: str | os.PathLike, **overrides: Any) -> "LlamaConfig":
    """Read a HF ``config.json``: the fields above are taken, HF bookkeeping keys ignored, and
    features this implementation does not have (biases, a RoPE scaling other than ``llama3``,
    another activation) are errors naming the file and key rather than silently different
    models."""
    with open(path) as f:
      hf = json.load(f)
    # transformers ≥ 5 writes ``rope_parameters: {rope_type, rope_theta, <scaling fields>}``;
    # older files carry ``rope_theta`` and ``rope_scaling: {rope_type | type, <fields>}`` (or
    # null) at the top level.
    parameters, scaling = hf.pop("rope_parameters", None), hf.pop("rope_scaling", None)
    rope_key = "rope_parameters" if parameters else "rope_scaling"
    rope = dict(parameters or scaling or {})
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    if "rope_theta" in rope:
      hf["rope_theta"] = rope.pop("rope_theta")
    if rope_type not in ("default", *layers.ROPE_SCALING_TYPES):
      raise ValueError(f"{path}: {rope_key}.rope_type={rope_type!r} is not supported (expected "
                       f"'default' or one of {layers.ROPE_SCALING_TYPES})")
    if rope_type == "default" and rope:
      raise ValueError(f"{path}: {rope_key} fields {sorted(rope)} are not supported with "
                       f"rope_type 'default'")
    if rope_type != "default":
      hf["rope_scaling"] = strict.from_dict(layers.RopeScaling, {"rope_type": rope_type, **rope},
                                            where=f"{path}: {rope_key}")
    unsupported = {"hidden_act": ("silu",), "attention_bias": (False,), "mlp_bias": (False,)}
    for key, allowed in unsupported.items():
      if key in hf and hf[key] not in allowed:
        raise ValueError(f"{path}: {key}={hf[key]!r} is not supported (expected {allowed[0]!r})")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
      raise ValueError(f"{path}: head_dim={head_dim} != hidden_size / num_attention_heads")
    # HF's ``dtype`` / ``torch_dtype`` is the storage dtype of the weights, not our compute dtype.
    fields = {f.name for f in dataclasses.fields(cls)} - {"dtype", "param_dtype"}
    values = {k: v for k, v in hf.items() if k in fields}
    return strict.from_dict(cls, {**values, **overrides}, where=str(path))


class LlamaModel(nn.Module):
  """The LLaMA backbone: embeddings, blocks, final norm → final-normed hidden ``[B, S, D]``."""
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, tokens_BxS, attention_mask_BxS=None, *, positions_BxS=None,
               cache_index_B=None):
    """``cache_index_B``: KV-cache mode, as in ``MTPTransformer``."""
    cfg, block = self.cfg, self.cfg.block
    attention_mask_BxS, cos_BxSxH, sin_BxSxH = layers.prepare_inputs(
        tokens_BxS, attention_mask_BxS, positions_BxS, cache_index_B, block)
    x_BxSxD = layers.Embed(cfg.vocab_size, cfg.hidden_size, cfg.dtype, cfg.param_dtype,
                           name="embed_tokens")(tokens_BxS)
    x_BxSxD = layers.run_blocks(x_BxSxD, cos_BxSxH, sin_BxSxH, attention_mask_BxS, cache_index_B,
                                cfg=block, remat=cfg.remat, scan=cfg.scan_layers,
                                n_blocks=cfg.num_hidden_layers, name="layers")
    return layers.RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name="norm")(x_BxSxD)


class LlamaForCausalLM(nn.Module):
  """Next-token LLaMA (the Rho-1 reference model): logits ``[B, S, V]``, ``logits[:, t]`` →
  ``x_{t+1}``."""
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, tokens_BxS, attention_mask_BxS=None, *, positions_BxS=None,
               return_hidden: bool = False, cache_index_B=None):
    """With ``return_hidden`` return the final-normed hidden ``[B, S, D]`` instead of logits.
    ``cache_index_B``: KV-cache mode (generation), as in ``MTPTransformer``."""
    cfg = self.cfg
    h_BxSxD = LlamaModel(cfg, name="model")(tokens_BxS, attention_mask_BxS,
                                             positions_BxS=positions_BxS,
                                             cache_index_B=cache_index_B)
    if return_hidden:
      return h_BxSxD
    return _lm_logits(self, cfg, h_BxSxD)


def _lm_logits(module: nn.Module, cfg: LlamaConfig, h_BxSxD):
  """Logits ``[B, S, V]`` of final-normed hidden states, inside ``module``'s compact call: its
  ``lm_head`` (created there), or the embedding table with ``tie_word_embeddings``."""
  if cfg.tie_word_embeddings:
    w_DxV = unembedding_DxV(nn.meta.unbox(module.variables["params"]))
    logits_BxSxV = jnp.einsum("bsd,dv->bsv", h_BxSxD, w_DxV.astype(cfg.dtype))
  else:
    logits_BxSxV = layers.Unembed(cfg.vocab_size, cfg.dtype, cfg.param_dtype,
                                  name="lm_head")(h_BxSxD)
  return nn.with_logical_constraint(logits_BxSxV, ("batch", "length", "vocab"))


def token_logprobs(logits_BxSxV, tokens_BxS):
  """``logp[b, t] = log p(x_t | x_<t)`` (fp32) from next-token logits (``logits[:, t]`` →
  ``x_{t+1}``): ``[B, S]``, 0 at ``t = 0`` (no prediction of the first token)."""
  logp_BxSxV = jax.nn.log_softmax(logits_BxSxV[:, :-1].astype(jnp.float32), axis=-1)
  picked_BxS = jnp.take_along_axis(logp_BxSxV, tokens_BxS[:, 1:, None], axis=-1)[..., 0]
  return jnp.pad(picked_BxS, ((0, 0), (1, 0)))


def unembedding_DxV(params):
  """The output projection ``[D, V]`` of a ``LlamaForCausalLM``'s params: ``lm_head/kernel``, or
  for tied input/output embeddings (``tie_word_embeddings``: no ``lm_head``) the transposed
  embedding table ``model/embed_tokens/embedding [V, D]``."""
  if "lm_head" in params:
    return params["lm_head"]["kernel"]
  return params["model"]["embed_tokens"]["embedding"].T


class ValueHead(nn.Module):
  """Value head on final-normed hidden states ``[..., D]`` → ``[...]``, computed in fp32.

  Used by ``ValueModel`` and by the shared-head variant on the policy trunk.
  """
  kind: str = "linear"
  dropout: float = 0.1
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, h_BxSxD, *, deterministic: bool = True, logprob=None):
    """``logprob`` (``[...]``, optional): adds ``logprob_weight · logprob`` (``ValueModel``'s
    ``hidden_logprob`` inputs; the scalar weight starts at 0)."""
    h = h_BxSxD.astype(jnp.float32)
    last_bias = nn.initializers.constant(self.bias_init)
    if self.kind in ("linear", "sigmoid"):
      v = nn.Dense(1, kernel_init=nn.with_logical_partitioning(
          nn.initializers.zeros, ("embed", None)), bias_init=last_bias, name="out")(h)
      if self.kind == "sigmoid":
        v = nn.sigmoid(v)
    elif self.kind == "mlp":
      d = h.shape[-1]
      for i, width in enumerate((d // 4, d // 8)):
        h = nn.Dense(width, kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed" if i == 0 else None, None)),
                     name=f"hidden_{i}")(h)
        h = nn.Dropout(self.dropout)(nn.gelu(h, approximate=False), deterministic=deterministic)
      v = nn.Dense(1, kernel_init=nn.initializers.zeros, bias_init=last_bias, name="out")(h)
    else:
      raise ValueError(f"value head kind={self.kind!r}: expected one of {VALUE_HEADS}")
    v = v[..., 0]
    if logprob is not None:
      v = v + self.param("logprob_weight", nn.initializers.zeros, (), jnp.float32) * logprob
    return v


class ValueModel(nn.Module):
  """LLaMA backbone + value head: ``V [B, S]`` (fp32); module docstring for ``value_inputs``."""
  cfg: LlamaConfig

  @nn.compact
  def __call__(self, tokens_BxS, attention_mask_BxS=None, *, positions_BxS=None,
               deterministic: bool = True, return_logprobs: bool = False):
    """With ``return_logprobs`` (``hidden_logprob`` inputs only) ``(V, logp)``, ``logp [B, S]`` as
    in ``token_logprobs`` (the critic's language-model loss reads it)."""
    cfg = self.cfg
    h_BxSxD = LlamaModel(cfg, name="model")(tokens_BxS, attention_mask_BxS,
                                             positions_BxS=positions_BxS)
    logp_BxS = None
    if cfg.value_inputs == "hidden_logprob":
      logp_BxS = token_logprobs(_lm_logits(self, cfg, h_BxSxD), tokens_BxS)
    elif return_logprobs:
      raise ValueError("ValueModel(return_logprobs=True) needs value_inputs='hidden_logprob' "
                       f"(the model has no language-model head), not {cfg.value_inputs!r}")
    v_BxS = ValueHead(cfg.value_head, cfg.value_head_dropout, cfg.value_head_bias_init,
                      name="value_head")(h_BxSxD, deterministic=deterministic, logprob=logp_BxS)
    return (v_BxS, logp_BxS) if return_logprobs else v_BxS
