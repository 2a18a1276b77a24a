"""The LLaMA building blocks shared by the MTP policy, the value model and the reference model.

Array names and docstring shapes use the shape legend of the package docstring (``wmtp_jax``).

Every parameter carries logical axis names (``nn.with_logical_partitioning``) and the main
activations are constrained with ``nn.with_logical_constraint``; a mesh and a set of rules map
those names onto devices (``flax.linen.logical_axis_rules``). Without rules they are no-ops.

RoPE layout: **rotate-half** (Hugging Face): dimension ``i`` of a head is paired with ``i + H/2``.
Meta's checkpoints pair adjacent dimensions ``(2i, 2i+1)``; ``wmtp_jax.checkpoints.layouts``
permutes the rows of Meta's ``wq``/``wk`` on conversion so the two give identical attention scores
(DESIGN §4). The frequencies are ``θ^(−2i/H)``, optionally rescaled as LLaMA-3.1 does
(``RopeScaling``).
"""

import dataclasses
import math
import os

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp

ROPE_SCALING_TYPES = ("llama3",)
ATTENTION_ENV = "WMTP_JAX_ATTENTION"  # auto (default) | xla | cudnn: see attention_implementation
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling, the fields of a HF ``rope_scaling`` (``rope_parameters``) entry.

  ``llama3`` (LLaMA-3.1 / 3.2; transformers' ``_compute_llama3_parameters``): with
  ``old = original_max_position_embeddings``, a frequency whose wavelength ``2π / f`` is below
  ``old / high_freq_factor`` is kept, one above ``old / low_freq_factor`` is divided by ``factor``,
  and one between is interpolated: ``(1 − s) f / factor + s f`` with
  ``s = (old / wavelength − low_freq_factor) / (high_freq_factor − low_freq_factor)``.
  """
  rope_type: str
  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int

  def __post_init__(self):
    if self.rope_type not in ROPE_SCALING_TYPES:
      raise ValueError(f"rope_scaling rope_type={self.rope_type!r} is not supported (expected one "
                       f"of {ROPE_SCALING_TYPES})")
    if not 0 < self.low_freq_factor < self.high_freq_factor:
      raise ValueError(f"rope_scaling: expected 0 < low_freq_factor={self.low_freq_factor} < "
                       f"high_freq_factor={self.high_freq_factor}")
    if self.factor <= 0 or self.original_max_position_embeddings <= 0:
      raise ValueError(f"rope_scaling: factor={self.factor} and original_max_position_embeddings="
                       f"{self.original_max_position_embeddings} must be positive")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Shape and numerics of one pre-norm LLaMA block (built from an MTP or a HF-style config)."""
  dim: int
  n_heads: int
  n_kv_heads: int
  ffn_hidden: int
  norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  dtype: str = "float32"        # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of the parameters

  def __post_init__(self):
    if self.dim % self.n_heads:
      raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
    if (self.dim // self.n_heads) % 2:
      raise ValueError(f"head dim {self.dim // self.n_heads} must be even for RoPE")
    for field in ("dtype", "param_dtype"):
      value = getattr(self, field)
      if value not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{field}={value!r}: expected 'float32', 'bfloat16' or 'float16'")

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_heads


def meta_ffn_hidden(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
  """Meta's SwiGLU hidden size:
  ``multiple_of * ceil(mult * int(2 * 4 * dim / 3) / multiple_of)``."""
  hidden = int(2 * 4 * dim / 3)
  if ffn_dim_multiplier is not None:
    hidden = int(ffn_dim_multiplier * hidden)
  return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _init(names: tuple[str, ...], init=nn.initializers.lecun_normal()):
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """``x / rms(x) * weight``, the normalisation computed in fp32 and cast back before the scale."""
  eps: float
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", _init(("embed",), nn.initializers.ones), (x.shape[-1],),
                        self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return normed.astype(x.dtype) * weight.astype(x.dtype)[(None,) * (x.ndim - 1)]


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None):
  """The ``H/2`` RoPE frequencies ``θ^(−2i/H)`` (fp32), rescaled by ``scaling`` if given."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  if scaling is None:
    return inv_freq
  old, low, high = (scaling.original_max_position_embeddings, scaling.low_freq_factor,
                    scaling.high_freq_factor)
  wavelength = 2 * math.pi / inv_freq
  divided = jnp.where(wavelength > old / low, inv_freq / scaling.factor, inv_freq)
  smooth = (old / wavelength - low) / (high - low)
  interpolated = (1 - smooth) * divided / scaling.factor + smooth * divided
  medium = (wavelength >= old / high) & (wavelength <= old / low)
  return jnp.where(medium, interpolated, divided)


def rope_cos_sin(positions_BxS, head_dim: int, theta: float,
                 scaling: RopeScaling | None = None):
  """``cos, sin`` of shape ``[B, S, H]`` (fp32) in the rotate-half layout (halves repeated), of
  the frequencies ``rope_inv_freq(head_dim, theta, scaling)``."""
  inv_freq = rope_inv_freq(head_dim, theta, scaling)
  angles_BxSxHhalf = positions_BxS.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]
  angles_BxSxH = jnp.concatenate([angles_BxSxHhalf, angles_BxSxHhalf], axis=-1)
  return jnp.cos(angles_BxSxH), jnp.sin(angles_BxSxH)


def apply_rope(x_BxSxQxH, cos_BxSxH, sin_BxSxH):
  """Rotate-half RoPE: ``x * cos + rotate_half(x) * sin``, computed in fp32, cast back."""
  x = x_BxSxQxH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos_BxSxH[:, :, None, :] + rotated * sin_BxSxH[:, :, None, :]
  return out.astype(x_BxSxQxH.dtype)


class Projection(nn.Module):
  """A bias-free linear map contracting the last ``n_in`` input dims with a kernel
  ``[in…, out…]`` (``features`` = the output dims), created directly in its final shape so that
  its logical axis ``names`` (one per kernel dim) also constrain it at initialisation.
  ``wmtp_jax.training.lora`` adds adapters to these modules."""
  features: int | tuple[int, ...]
  n_in: int
  names: tuple[str, ...]
  dtype: str
  param_dtype: str

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = x.shape[x.ndim - self.n_in:]
    n_out = len(features)
    init = nn.initializers.lecun_normal(in_axis=tuple(range(self.n_in)),
                                        out_axis=tuple(range(self.n_in, self.n_in + n_out)))
    kernel = self.param("kernel", _init(self.names, init), in_shape + features, self.param_dtype)
    axes = (tuple(range(x.ndim - self.n_in, x.ndim)), tuple(range(self.n_in)))
    return jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), (axes, ((), ())))


def attention_implementation(dtype, head_dim: int, *, kv_cache: bool) -> str:
  """The kernel ``Attention`` runs ``jax.nn.dot_product_attention`` with: ``"cudnn"`` (fused flash
  attention) on a CUDA GPU for 16-bit inputs whose head width is a multiple of 8 and at most 128,
  outside KV-cache mode (whose per-slot mask cuDNN does not take); ``"xla"`` elsewhere (the
  function's own default, ``implementation=None``, is XLA everywhere). The environment variable
  ``WMTP_JAX_ATTENTION`` = ``xla`` | ``cudnn`` forces one (``cudnn`` where it does not apply is
  an error of ``jax.nn.dot_product_attention``); read when a function is traced."""
  forced = os.environ.get(ATTENTION_ENV, "auto")
  if forced not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"{ATTENTION_ENV}={forced!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
  if forced != "auto":
    return forced
  cuda = "cuda" in jax.extend.backend.get_backend().platform_version.lower()
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  fits = head_dim % 8 == 0 and head_dim <= 128
  return "cudnn" if cuda and half and fits and not kv_cache else "xla"


def _cudnn_causal_attention(q_BxSxQxH, k_BxSxKxH, v_BxSxKxH, attention_mask_BxS):
  """Causal cuDNN attention with the key padding mask given as key counts: rows are right
  padded, so row ``b`` sees its first ``sum(mask[b])`` keys (at least one, so that the unused
  outputs of an empty row stay finite, as the XLA path's are)."""
  lengths_B = None if attention_mask_BxS is None else jnp.maximum(
      attention_mask_BxS.astype(jnp.int32).sum(axis=-1), 1)
  return jax.nn.dot_product_attention(q_BxSxQxH, k_BxSxKxH, v_BxSxKxH, is_causal=True,
                                      key_value_seq_lengths=lengths_B, implementation="cudnn")


class Attention(nn.Module):
  """Causal grouped-query attention with a key padding mask, and an optional KV cache.

  Kernels: ``wq [D, Q, H]``, ``wk, wv [D, K, H]``, ``wo [Q, H, D]`` (no biases). The attention
  itself is ``jax.nn.dot_product_attention``, on a GPU the fused cuDNN kernel where it applies
  (``attention_implementation``).

  **KV-cache mode** (``cache_index_B`` given; generation, ``wmtp_jax.decoding``): the ``T`` input
  tokens of row ``b`` occupy cache slots ``cache_index_B[b] … cache_index_B[b] + T − 1`` of the
  ``cache`` collection variables ``cached_key`` / ``cached_value`` ``[B, C, K, H]`` (``C`` = the
  cache length; the variables are created by a call that initialises the ``cache`` collection, with
  ``C`` = that call's ``T``). Their keys and values are written there (the collection must be
  mutable) and the queries attend to every slot ``j ≤`` their own slot, further restricted by
  ``attention_mask_BxS`` (then ``[B, C]``) when given. Slots past a row's own are never read, so
  stale entries there (padding, rejected speculative drafts) need no clearing.
  """
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x_BxSxD, cos_BxSxH, sin_BxSxH, attention_mask_BxS, cache_index_B=None):
    cfg = self.cfg
    dense = lambda feats, axis, names, name: Projection(
        feats, n_in=len(axis) if isinstance(axis, tuple) else 1, names=names, dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, name=name)
    q_BxSxQxH = dense((cfg.n_heads, cfg.head_dim), -1, ("embed", "heads", "head_dim"),
                      "wq")(x_BxSxD)
    k_BxSxKxH = dense((cfg.n_kv_heads, cfg.head_dim), -1, ("embed", "kv_heads", "head_dim"),
                      "wk")(x_BxSxD)
    v_BxSxKxH = dense((cfg.n_kv_heads, cfg.head_dim), -1, ("embed", "kv_heads", "head_dim"),
                      "wv")(x_BxSxD)
    q_BxSxQxH = nn.with_logical_constraint(
        apply_rope(q_BxSxQxH, cos_BxSxH, sin_BxSxH), ("batch", "length", "heads", "head_dim"))
    k_BxSxKxH = nn.with_logical_constraint(
        apply_rope(k_BxSxKxH, cos_BxSxH, sin_BxSxH), ("batch", "length", "kv_heads", "head_dim"))
    v_BxSxKxH = nn.with_logical_constraint(v_BxSxKxH, ("batch", "length", "kv_heads", "head_dim"))
    kv_cache = cache_index_B is not None
    if attention_implementation(q_BxSxQxH.dtype, cfg.head_dim, kv_cache=kv_cache) == "cudnn":
      out_BxSxQxH = _cudnn_causal_attention(q_BxSxQxH, k_BxSxKxH, v_BxSxKxH, attention_mask_BxS)
    else:
      if kv_cache:
        k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS = self._update_cache(
            k_BxSxKxH, v_BxSxKxH, cache_index_B, attention_mask_BxS)
      else:
        mask_Bx1xTxS = None if attention_mask_BxS is None else (
            attention_mask_BxS.astype(bool)[:, None, None, :])
      out_BxSxQxH = jax.nn.dot_product_attention(
          q_BxSxQxH, k_BxSxKxH, v_BxSxKxH, mask=mask_Bx1xTxS, is_causal=not kv_cache)
    out_BxSxQxH = nn.with_logical_constraint(out_BxSxQxH, ("batch", "length", "heads", "head_dim"))
    return dense(cfg.dim, (-2, -1), ("heads", "head_dim", "embed"), "wo")(out_BxSxQxH)

  def _update_cache(self, k_BxTxKxH, v_BxTxKxH, cache_index_B, key_mask_BxC):
    """Writes the new keys/values at each row's slots; returns the whole cache and the mask
    ``[B, 1, T, C]`` (slot ``j`` visible to query ``t`` iff ``j ≤ cache_index_B[b] + t``)."""
    names = ("batch", "length", "kv_heads", "head_dim")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k_BxTxKxH.shape, k_BxTxKxH.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v_BxTxKxH.shape, v_BxTxKxH.dtype)
    start_B = jnp.asarray(cache_index_B, jnp.int32)
    write = jax.vmap(lambda cache, new, i: jax.lax.dynamic_update_slice_in_dim(cache, new, i, 0))
    cached_k.value = nn.with_logical_constraint(
        write(cached_k.value, k_BxTxKxH.astype(cached_k.value.dtype), start_B), names)
    cached_v.value = nn.with_logical_constraint(
        write(cached_v.value, v_BxTxKxH.astype(cached_v.value.dtype), start_B), names)
    n_slots, n_new = cached_k.value.shape[1], k_BxTxKxH.shape[1]
    query_slot_BxT = start_B[:, None] + jnp.arange(n_new, dtype=jnp.int32)[None, :]
    mask_BxTxC = jnp.arange(n_slots, dtype=jnp.int32)[None, None, :] <= query_slot_BxT[:, :, None]
    if key_mask_BxC is not None:
      mask_BxTxC &= key_mask_BxC.astype(bool)[:, None, :]
    return cached_k.value, cached_v.value, mask_BxTxC[:, None]


class FeedForward(nn.Module):
  """SwiGLU ``w2(silu(w1 x) * w3 x)``: ``w1`` gate and ``w3`` up ``[D, F]``, ``w2`` down
  ``[F, D]``."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x_BxSxD):
    cfg = self.cfg
    dense = lambda feats, names, name: Projection(
        feats, n_in=1, names=names, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)
    gate_BxSxF = dense(cfg.ffn_hidden, ("embed", "mlp"), "w1")(x_BxSxD)
    up_BxSxF = dense(cfg.ffn_hidden, ("embed", "mlp"), "w3")(x_BxSxD)
    h_BxSxF = nn.with_logical_constraint(nn.silu(gate_BxSxF) * up_BxSxF, ("batch", "length", "mlp"))
    return dense(cfg.dim, ("mlp", "embed"), "w2")(h_BxSxF)


class Block(nn.Module):
  """Pre-norm block: ``h = x + attn(attention_norm(x)); out = h + ffn(ffn_norm(h))``."""
  cfg: BlockConfig

  @nn.compact
  def __call__(self, x_BxSxD, cos_BxSxH, sin_BxSxH, attention_mask_BxS, cache_index_B=None):
    """``cache_index_B``: KV-cache mode (see ``Attention``)."""
    cfg = self.cfg
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.param_dtype, name=name)
    h_BxSxD = x_BxSxD + Attention(cfg, name="attention")(
        norm("attention_norm")(x_BxSxD), cos_BxSxH, sin_BxSxH, attention_mask_BxS, cache_index_B)
    out_BxSxD = h_BxSxD + FeedForward(cfg, name="feed_forward")(norm("ffn_norm")(h_BxSxD))
    return nn.with_logical_constraint(out_BxSxD, ("batch", "length", "embed"))


# ``remat`` name → ``jax.checkpoint_policies`` policy (what the backward pass may keep instead of
# recomputing); ``full`` keeps only the block inputs.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def block_class(remat: str, *, prevent_cse: bool = True) -> type[nn.Module]:
  """``Block``, or ``Block`` rematerialised with policy ``remat`` (same parameter names).

  ``remat``: ``"none"`` or a key of ``REMAT_POLICIES``. ``prevent_cse=False`` inside ``nn.scan``
  (the scan already keeps XLA from merging the recomputation into the forward pass).
  """
  if remat == "none":
    return Block
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}: expected 'none' or one of {sorted(REMAT_POLICIES)}")
  return nn.remat(Block, policy=REMAT_POLICIES[remat], prevent_cse=prevent_cse)


def prepare_inputs(tokens_BxS, attention_mask_BxS, positions_BxS, cache_index_B,
                   cfg: BlockConfig):
  """The block inputs besides the embeddings: ``(attention_mask_BxS, cos_BxSxH, sin_BxSxH)``.

  Defaults: the mask is all ones (``None`` in KV-cache mode: every slot up to a row's own is
  visible, see ``Attention``); the positions are ``0 … S−1`` for every row (rows are right padded,
  so this is exact), in KV-cache mode the cache slots ``cache_index_B[b] + 0 … S−1``. ``cos``,
  ``sin``: ``rope_cos_sin`` of the positions.
  """
  if attention_mask_BxS is None and cache_index_B is None:
    attention_mask_BxS = jnp.ones(tokens_BxS.shape, jnp.int32)
  if positions_BxS is None:
    positions_BxS = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1]), tokens_BxS.shape)
    if cache_index_B is not None:
      positions_BxS = positions_BxS + jnp.asarray(cache_index_B, positions_BxS.dtype)[:, None]
  cos_BxSxH, sin_BxSxH = rope_cos_sin(positions_BxS, cfg.head_dim, cfg.rope_theta,
                                      cfg.rope_scaling)
  return attention_mask_BxS, cos_BxSxH, sin_BxSxH


def _scan_body(block, x_BxSxD, *broadcast):
  return block(x_BxSxD, *broadcast), None


def run_blocks(x_BxSxD, cos_BxSxH, sin_BxSxH, attention_mask_BxS, cache_index_B=None, *,
               cfg: BlockConfig, remat: str, scan: bool, n_blocks: int, name: str):
  """``n_blocks`` chained blocks (``block_class(remat)``), the trunk of every model. Call from a
  compact method; returns ``[B, S, D]``. ``cache_index_B``: KV-cache mode (see ``Attention``).

  Unrolled, the blocks are the submodules ``{name}_0 … {name}_{n_blocks−1}``. With ``scan`` (and
  ``n_blocks > 0``) they run as one ``flax.linen.scan`` loop, so that XLA compiles one block
  instead of ``n_blocks``: their parameters form one subtree ``name`` whose leaves carry a leading
  ``layers`` axis ``[L, …]`` (``wmtp_jax.models.scan_layout`` converts to and from the per-layer
  layout), the KV-cache variables likewise ``[L, B, C, K, H]``. The scan computes what the
  unrolled blocks do (up to the fp32 summation order); a fresh init draws other random values.
  """
  if not (scan and n_blocks):
    block_cls = block_class(remat)
    for i in range(n_blocks):
      x_BxSxD = block_cls(cfg, name=f"{name}_{i}")(x_BxSxD, cos_BxSxH, sin_BxSxH,
                                                    attention_mask_BxS, cache_index_B)
    return x_BxSxD
  loop = nn.scan(_scan_body, variable_axes={"params": 0, "cache": 0},
                 split_rngs={"params": True}, in_axes=nn.broadcast, length=n_blocks,
                 metadata_params={nn.PARTITION_NAME: "layers"})
  block = block_class(remat, prevent_cse=False)(cfg, name=name)
  out_BxSxD, _ = loop(block, x_BxSxD, cos_BxSxH, sin_BxSxH, attention_mask_BxS, cache_index_B)
  return out_BxSxD


class Embed(nn.Module):
  """Token embedding table ``[V, D]``, looked up in the compute dtype."""
  vocab_size: int
  dim: int
  dtype: str
  param_dtype: str

  @nn.compact
  def __call__(self, tokens_BxS):
    table_VxD = self.param("embedding", _init(("vocab", "embed"), nn.initializers.normal(1.0)),
                           (self.vocab_size, self.dim), self.param_dtype)
    x_BxSxD = jnp.take(table_VxD, tokens_BxS, axis=0).astype(self.dtype)
    return nn.with_logical_constraint(x_BxSxD, ("batch", "length", "embed"))


class Unembed(nn.Module):
  """Untied output projection ``[D, V]`` (Flax kernel layout; a torch ``output.weight`` is
  ``[V, D]``)."""
  vocab_size: int
  dtype: str
  param_dtype: str

  @nn.compact
  def __call__(self, h_BxSx___xD):
    kernel_DxV = self.param("kernel", _init(("embed", "vocab")),
                            (h_BxSx___xD.shape[-1], self.vocab_size), self.param_dtype)
    return jnp.einsum("...d,dv->...v", h_BxSx___xD, kernel_DxV.astype(self.dtype))

