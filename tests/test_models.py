"""Model parity against PyTorch references, causality, RoPE layout and config loading.

The MTP reference is ``torch_reference.TorchMTP``, a plain PyTorch transcription of Meta's
``llama/model.py``. The value/reference models are compared with ``transformers.LlamaForCausalLM``.
"""

import json

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from torch_reference import (TorchMTP, hf_llama, padded_batch, randomize_, state_dict_numpy,
                             torch_apply_rotary, torch_freqs_cis)
from wmtp_jax.models import layers
from wmtp_jax.checkpoints import layouts
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM, ValueModel
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

TINY_MTP = dict(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32,
                ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500.0, n_future_tokens=3)


# ----------------------------------------------------------------------------------------------
def test_mtp_matches_meta_torch_reference():
  cfg = MTPConfig(**TINY_MTP)
  ref = TorchMTP(cfg)
  randomize_(ref, seed=0)
  params = layouts.load_state_dict(layouts.meta_entries(cfg), state_dict_numpy(ref), cfg.block)
  tokens, mask = padded_batch(np.random.default_rng(0), cfg.vocab_size, 3, 11, [11, 7, 1])

  with torch.no_grad():
    want = ref(torch.tensor(tokens), torch.tensor(mask)).numpy()
  got = MTPTransformer(cfg).apply({"params": params}, tokens, mask)
  assert got.shape == (3, 11, cfg.n_future_tokens, cfg.vocab_size)
  valid = mask.astype(bool)  # outputs at padded positions are don't-care
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=1e-4, atol=1e-4)

  head0 = MTPTransformer(cfg).apply({"params": params}, tokens, mask, heads=1)
  np.testing.assert_allclose(np.asarray(head0)[valid][:, 0], np.asarray(got)[valid][:, 0],
                             rtol=1e-5, atol=1e-5)


def test_mtp_hidden_trunk_and_shared_value_head_outputs():
  cfg = MTPConfig(**TINY_MTP, value_head="linear", value_head_bias_init=0.5)
  model = MTPTransformer(cfg)
  tokens, mask = padded_batch(np.random.default_rng(1), cfg.vocab_size, 2, 9, [9, 5])
  variables = model.init(jax.random.key(0), tokens, mask)
  logits = model.apply(variables, tokens, mask)
  hidden, trunk, values = model.apply(variables, tokens, mask, return_hidden=True,
                                      return_trunk_hidden=True, return_values=True)
  params = nn.meta.unbox(variables)["params"]
  kernel = params["output"]["kernel"]
  head = params["value_head"]["out"]
  assert values.shape == (2, 9) and head["bias"].tolist() == [0.5]
  np.testing.assert_allclose(values, (trunk @ head["kernel"])[..., 0] + 0.5, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="value head"):
    MTPTransformer(MTPConfig(**TINY_MTP)).apply(variables, tokens, mask, return_values=True)
  assert hidden.shape == (2, 9, cfg.n_future_tokens, cfg.dim) and trunk.shape == (2, 9, cfg.dim)
  np.testing.assert_allclose(hidden @ kernel, logits, rtol=1e-5, atol=1e-5)
  # The trunk output is final-normed: its RMS per position is the norm weight's RMS (ones at init).
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(trunk ** 2, -1)), 1.0, rtol=1e-3)


def test_llama_matches_transformers(tmp_path):
  hf_cfg, ref = hf_llama(seed=1)
  hf_cfg.save_pretrained(tmp_path)
  cfg = LlamaConfig.from_hf_config(tmp_path / "config.json")
  params = layouts.load_state_dict(layouts.hf_entries(cfg), state_dict_numpy(ref), cfg.block)
  tokens, mask = padded_batch(np.random.default_rng(2), cfg.vocab_size, 3, 10, [10, 6, 3])
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  got = LlamaForCausalLM(cfg).apply({"params": params}, tokens, mask)
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "sigmoid", "mlp"])
def test_value_model_matches_transformers_backbone_plus_head(kind):
  hf_cfg, ref = hf_llama(seed=2)
  cfg = LlamaConfig(**{k: getattr(hf_cfg, k) for k in (
      "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
      "num_key_value_heads", "max_position_embeddings", "rms_norm_eps")},
                    rope_theta=1000.0, value_head=kind, value_head_bias_init=0.5)
  backbone = layouts.load_state_dict(layouts.hf_entries(cfg, lm_head=False),
                                     {k: v for k, v in state_dict_numpy(ref).items()
                                      if not k.startswith("lm_head")}, cfg.block)
  d = cfg.hidden_size
  gen = torch.Generator().manual_seed(3)
  widths = [d, d // 4, d // 8, 1] if kind == "mlp" else [d, 1]
  torch_layers = [torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
  head_params = {}
  for i, lin in enumerate(torch_layers):
    with torch.no_grad():  # random last layer too (ours zero-inits it; parity needs signal)
      lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * 0.3)
      lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen) * 0.3)
    name = "out" if i == len(torch_layers) - 1 else f"hidden_{i}"
    head_params[name] = {"kernel": lin.weight.detach().numpy().T, "bias": lin.bias.detach().numpy()}

  tokens, mask = padded_batch(np.random.default_rng(3), cfg.vocab_size, 2, 8, [8, 4])
  with torch.no_grad():
    h = ref.model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).last_hidden_state
    for i, lin in enumerate(torch_layers):
      h = lin(h)
      if i < len(torch_layers) - 1:
        h = torch.nn.functional.gelu(h)
    want = (torch.sigmoid(h) if kind == "sigmoid" else h)[..., 0].numpy()
  got = ValueModel(cfg).apply({"params": {"model": backbone["model"], "value_head": head_params}},
                              tokens, mask)
  assert got.shape == (2, 8) and got.dtype == jnp.float32
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], rtol=1e-4, atol=1e-4)


def test_value_head_init_follows_design():
  cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, value_head="mlp", value_head_bias_init=0.5)
  tokens = jnp.zeros((2, 5), jnp.int32)
  variables = ValueModel(cfg).init(jax.random.key(0), tokens)
  out = nn.meta.unbox(variables)["params"]["value_head"]["out"]
  assert out["kernel"].shape == (4, 1) and not np.any(out["kernel"])  # h→h/4→h/8→1, zero last
  np.testing.assert_array_equal(ValueModel(cfg).apply(variables, tokens), 0.5)
  with pytest.raises(ValueError, match="value_head='conv'"):
    LlamaConfig(value_head="conv")


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
    return np.asarray(layers.apply_rope(jnp.asarray(y.reshape(1, seq, n_heads, head_dim)), cos, sin))
  our_scores = np.einsum("bsnh,btnh->bnst", ours(wq), ours(wk))
  np.testing.assert_allclose(our_scores, meta_scores, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(
      layouts.rotate_half_to_interleaved(layouts.interleaved_to_rotate_half(wq, n_heads), n_heads), wq)


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


def test_bf16_compute_with_fp32_params():
  cfg = MTPConfig(**{**TINY_MTP, "dtype": "bfloat16"})
  model = MTPTransformer(cfg)
  tokens, mask = padded_batch(np.random.default_rng(6), cfg.vocab_size, 2, 6, [6, 4])
  variables = model.init(jax.random.key(0), tokens, mask)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(nn.meta.unbox(variables)))
  out = model.apply(variables, tokens, mask)
  assert out.dtype == jnp.bfloat16
  ref = MTPTransformer(MTPConfig(**TINY_MTP)).apply(variables, tokens, mask)
  rel = np.linalg.norm(np.asarray(out, np.float32) - ref) / np.linalg.norm(ref)
  assert rel < 0.05, rel  # bf16 rounding, not a parity tolerance


def test_logical_axis_names_on_every_parameter():
  model = MTPTransformer(MTPConfig(**TINY_MTP))
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  boxed = jax.tree_util.tree_leaves(abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert boxed and all(isinstance(x, nn.Partitioned) for x in boxed)
  names = {p.names for p in boxed}
  assert ("embed", "heads", "head_dim") in names and ("vocab", "embed") in names
  assert ("embed", "vocab") in names and ("mlp", "embed") in names


# ----------------------------------------------------------------------------------------------
# Configs and strict weight loading.
# ----------------------------------------------------------------------------------------------
META_7B_1T_4 = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "vocab_size": 32000,
                "multiple_of": 256, "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5,
                "rope_theta": 10000.0, "n_future_tokens": 4}


def test_meta_params_json_loads_directly(tmp_path):
  path = tmp_path / "params.json"
  path.write_text(json.dumps(META_7B_1T_4))
  cfg = MTPConfig.from_params_json(path)
  assert cfg.block.ffn_hidden == 11008 and cfg.n_trunk_layers == 28 and cfg.max_seq_len == 2048
  entries = layouts.meta_entries(cfg)
  assert sum(k.startswith("layers.") and k.endswith("wq.weight") for k in entries) == 29
  assert sum(k.startswith("extra_heads.") and k.endswith("wq.weight") for k in entries) == 3
  path.write_text(json.dumps({**META_7B_1T_4, "n_futre_tokens": 2}))
  with pytest.raises(ValueError, match=r"params\.json.*n_futre_tokens"):
    MTPConfig.from_params_json(path)


def test_hf_config_rejects_unsupported_features(tmp_path):
  transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                           rope_scaling={"rope_type": "linear", "factor": 2.0}).save_pretrained(tmp_path)
  with pytest.raises(ValueError, match=r"config\.json: rope_parameters\.rope_type='linear'"):
    LlamaConfig.from_hf_config(tmp_path / "config.json")
  # The older (transformers 4) layout: rope_theta and rope_scaling at the top level.
  old = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "rope_theta": 1e6,
         "rope_scaling": None, "architectures": ["LlamaForCausalLM"], "torch_dtype": "float16"}
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert LlamaConfig.from_hf_config(tmp_path / "config.json").rope_theta == 1e6
  (tmp_path / "config.json").write_text(json.dumps({**old, "attention_bias": True}))
  with pytest.raises(ValueError, match=r"config\.json: attention_bias=True"):
    LlamaConfig.from_hf_config(tmp_path / "config.json")


def test_strict_state_dict_errors_name_the_keys():
  cfg = MTPConfig(**TINY_MTP)
  sd = state_dict_numpy(TorchMTP(cfg))
  entries = layouts.meta_entries(cfg)

  missing = {k: v for k, v in sd.items() if k != "layers.0.attention.wq.weight"}
  with pytest.raises(ValueError, match=r"ckpt: .*missing keys \['layers\.0\.attention\.wq\.weight'\]"):
    layouts.load_state_dict(entries, missing, cfg.block, where="ckpt")

  wrong = {**sd, "norm.weight": np.zeros(3, np.float32)}
  with pytest.raises(ValueError, match=r"wrongly shaped \['norm\.weight: \(3,\) \(expected \(64,\)\)'\]"):
    layouts.load_state_dict(entries, wrong, cfg.block)

  # A 3-head checkpoint read with n_future_tokens=2: an error, not a silently random block.
  cfg2 = MTPConfig(**{**TINY_MTP, "n_future_tokens": 2})
  with pytest.raises(ValueError, match=r"unexpected keys.*extra_heads\.1.*n_future_tokens=3"):
    layouts.load_state_dict(layouts.meta_entries(cfg2), sd, cfg2.block)

  # HF rotary buffers are skipped on purpose.
  hf_cfg, ref = hf_llama(seed=0)
  lc = LlamaConfig(vocab_size=89, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                   num_attention_heads=6, num_key_value_heads=2)
  hf_sd = {**state_dict_numpy(ref), "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4)}
  layouts.load_state_dict(layouts.hf_entries(lc), hf_sd, lc.block)
