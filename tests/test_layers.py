"""The shared layers in the models: causal attention (no gradient from future tokens), padding
ignored, the rotate-half RoPE layout against Meta's interleaved one, logical axis names."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torch_reference import TINY_MTP, padded_batch, torch_apply_rotary, torch_freqs_cis
from wmtp_jax.checkpoints import layouts
from wmtp_jax.models import layers
from wmtp_jax.models.llama import LlamaConfig, ValueModel
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer


@pytest.mark.parametrize("model_name", ["mtp", "value"])
def test_no_gradient_from_future_tokens(model_name):
  """d out[t] / d x[j] = 0 for j > t: every position carries its own token id, so the gradient
  w.r.t. embedding row j is the gradient w.r.t. the input at position j."""
  seq = 10
  if model_name == "mtp":
    model = MTPTransformer(MTPConfig(**TINY_MTP))
    table_path = ("tok_embeddings", "embedding")  # vocab 97 > seq
  else:
    model = ValueModel(LlamaConfig(vocab_size=seq, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, value_head="linear"))
    table_path = ("model", "embed_tokens", "embedding")
  tokens = jnp.arange(seq)[None, :]
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(model.init(jax.random.key(0), tokens)))
  for path, leaf in flat.items():  # the value head starts at zero (as the reference's): perturb it
    if "value_head" in path:
      flat[path] = jax.random.normal(jax.random.key(1), leaf.shape, leaf.dtype)

  def out_per_position(table_VxD):
    variables = flax.traverse_util.unflatten_dict({**flat, ("params", *table_path): table_VxD})
    out = model.apply(variables, tokens)[0]
    return jnp.sum(out.reshape(seq, -1), axis=-1)  # [S]: everything computed at position t

  jac_SxVxD = jax.jacrev(out_per_position)(flat[("params", *table_path)])
  row_norms_SxS = np.linalg.norm(np.asarray(jac_SxVxD)[:, :seq], axis=-1)  # [t, j]
  assert np.all(np.triu(row_norms_SxS, k=1) == 0.0), row_norms_SxS  # j > t: exactly zero
  assert np.all(row_norms_SxS[np.tril_indices(seq)] > 0.0), row_norms_SxS  # j ≤ t: it does flow


def test_rope_meta_interleaved_equals_rotate_half_on_permuted_weights():
  rng = np.random.default_rng(4)
  n_heads, head_dim, d_in, seq = 3, 8, 20, 7
  wq = rng.normal(size=(n_heads * head_dim, d_in)).astype(np.float32)
  wk = rng.normal(size=(n_heads * head_dim, d_in)).astype(np.float32)
  x = rng.normal(size=(1, seq, d_in)).astype(np.float32)
  theta = 10000.0

  freqs = torch_freqs_cis(head_dim, seq, theta)
  def meta(w):
    y = torch.tensor(x) @ torch.tensor(w).T
    return torch_apply_rotary(y.view(1, seq, n_heads, head_dim), freqs).numpy()
  meta_scores = np.einsum("bsnh,btnh->bnst", meta(wq), meta(wk))

  cos, sin = layers.rope_cos_sin(jnp.arange(seq)[None], head_dim, theta)
  def ours(w):
    y = x @ layouts.interleaved_to_rotate_half(w, n_heads).T
    return np.asarray(layers.apply_rope(jnp.asarray(y.reshape(1, seq, n_heads, head_dim)), cos,
                                        sin))
  our_scores = np.einsum("bsnh,btnh->bnst", ours(wq), ours(wk))
  np.testing.assert_allclose(our_scores, meta_scores, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(
      layouts.rotate_half_to_interleaved(layouts.interleaved_to_rotate_half(wq, n_heads), n_heads),
      wq)


def test_attention_padding_rows_are_finite_and_ignored():
  cfg = MTPConfig(**TINY_MTP)
  model = MTPTransformer(cfg)
  tokens, mask = padded_batch(np.random.default_rng(5), cfg.vocab_size, 2, 8, [5, 0])
  variables = model.init(jax.random.key(0), tokens, mask)
  out = model.apply(variables, tokens, mask)
  assert np.all(np.isfinite(out))
  # Changing padded tokens does not change the outputs at real positions.
  tokens2 = tokens.copy()
  tokens2[0, 5:] = (tokens2[0, 5:] + 1) % cfg.vocab_size
  out2 = model.apply(variables, tokens2, mask)
  np.testing.assert_array_equal(np.asarray(out)[0, :5], np.asarray(out2)[0, :5])


def test_logical_axis_names_on_every_parameter():
  model = MTPTransformer(MTPConfig(**TINY_MTP))
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  boxed = jax.tree_util.tree_leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxed and all(isinstance(x, nn.Partitioned) for x in boxed)
  names = {p.names for p in boxed}
  assert ("embed", "heads", "head_dim") in names and ("vocab", "embed") in names
  assert ("embed", "vocab") in names and ("mlp", "embed") in names
