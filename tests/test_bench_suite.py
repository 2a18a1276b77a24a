"""The device suite ``python -m wmtp_jax.bench suite`` and what it records: the attention kernel
the models pick (``layers.attention_implementation``)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.models import layers

CUDA = types.SimpleNamespace(platform_version="cuda 12080")


@pytest.fixture
def on_cuda(monkeypatch):
  """``layers`` sees a CUDA backend (the kernels still run on this machine's)."""
  monkeypatch.delenv(layers.ATTENTION_ENV, raising=False)
  monkeypatch.setattr(jax.extend.backend, "get_backend", lambda: CUDA)


@pytest.mark.parametrize("dtype, head_dim, kv_cache, expected", [
    (jnp.bfloat16, 128, False, "cudnn"), (jnp.float16, 64, False, "cudnn"),
    (jnp.float32, 128, False, "xla"),     # cuDNN attention takes 16-bit inputs only
    (jnp.bfloat16, 256, False, "xla"), (jnp.bfloat16, 100, False, "xla"),  # head width
    (jnp.bfloat16, 128, True, "xla")])    # the KV cache's per-slot mask
def test_cudnn_attention_where_it_applies_on_cuda(on_cuda, dtype, head_dim, kv_cache, expected):
  assert layers.attention_implementation(dtype, head_dim, kv_cache=kv_cache) == expected


def test_xla_attention_off_cuda_and_the_environment_override(monkeypatch):
  monkeypatch.delenv(layers.ATTENTION_ENV, raising=False)
  assert layers.attention_implementation(jnp.bfloat16, 128, kv_cache=False) == "xla"  # this CPU
  monkeypatch.setattr(jax.extend.backend, "get_backend", lambda: CUDA)
  monkeypatch.setenv(layers.ATTENTION_ENV, "xla")
  assert layers.attention_implementation(jnp.bfloat16, 128, kv_cache=False) == "xla"
  monkeypatch.setenv(layers.ATTENTION_ENV, "cudnn")
  assert layers.attention_implementation(jnp.float32, 128, kv_cache=True) == "cudnn"
  monkeypatch.setenv(layers.ATTENTION_ENV, "flash")
  with pytest.raises(ValueError, match="WMTP_JAX_ATTENTION='flash'"):
    layers.attention_implementation(jnp.bfloat16, 128, kv_cache=False)


def test_cudnn_path_passes_the_padding_as_key_counts(on_cuda, monkeypatch):
  """On CUDA a bf16 ``Attention`` calls the cuDNN kernel with the right-padded rows' key counts
  instead of the mask; run here by the XLA kernel with those counts, it gives the XLA path's
  output bit for bit (full, padded and one-token rows)."""
  cfg = layers.BlockConfig(dim=64, n_heads=4, n_kv_heads=2, ffn_hidden=96, dtype="bfloat16")
  attention = layers.Attention(cfg)
  lengths_B = np.array([16, 9, 1])
  mask_BxS = (np.arange(16)[None, :] < lengths_B[:, None]).astype(np.int32)
  x_BxSxD = jax.random.normal(jax.random.key(0), (3, 16, 64))
  positions_BxS = jnp.broadcast_to(jnp.arange(16)[None, :], (3, 16))
  cos_BxSxH, sin_BxSxH = layers.rope_cos_sin(positions_BxS, cfg.head_dim, cfg.rope_theta)
  args = (x_BxSxD, cos_BxSxH, sin_BxSxH, mask_BxS)
  monkeypatch.setenv(layers.ATTENTION_ENV, "xla")
  params = attention.init(jax.random.key(1), *args)
  expected = attention.apply(params, *args)
  monkeypatch.delenv(layers.ATTENTION_ENV)
  calls = []
  xla_attention = jax.nn.dot_product_attention

  def as_cudnn(*a, implementation=None, **kwargs):
    calls.append((implementation, kwargs))
    return xla_attention(*a, implementation="xla", **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", as_cudnn)
  got = attention.apply(params, *args)
  [(implementation, kwargs)] = calls
  assert implementation == "cudnn" and kwargs["is_causal"] and "mask" not in kwargs
  np.testing.assert_array_equal(kwargs["key_value_seq_lengths"], lengths_B)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))
