"""LLaMA (the reference and value models) against ``transformers.LlamaForCausalLM`` (LLaMA-3's
``llama3`` RoPE scaling and tied embeddings included), the value head, and HF ``config.json``
loading."""

import dataclasses
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers import modeling_rope_utils

from convert_helpers import LLAMA3_SCALING, LLAMA3_SEQ, hf_llama3
from torch_reference import hf_llama, padded_batch, state_dict_numpy
from wmtp_jax.checkpoints import layouts
from wmtp_jax.models import layers
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM, ValueModel


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


@pytest.mark.parametrize("layout", ["rope_parameters", "rope_scaling"])
def test_llama3_scaling_and_tied_embeddings_match_transformers(tmp_path, layout):
  """θ = 500000, ``llama3`` RoPE scaling of a 28-position original context and tied embeddings,
  at 40 positions; the config read from a transformers 5 ``config.json`` (``rope_parameters``) or
  an older one (``rope_theta`` and ``rope_scaling`` at the top level, as LLaMA-3.1 ships it)."""
  hf_cfg, ref = hf_llama3(seed=6)
  hf_cfg.save_pretrained(tmp_path)
  if layout == "rope_scaling":
    data = json.loads((tmp_path / "config.json").read_text())
    rope = data.pop("rope_parameters")
    data.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope)
    (tmp_path / "config.json").write_text(json.dumps(data))
  cfg = LlamaConfig.from_hf_config(tmp_path / "config.json")
  assert cfg.rope_theta == 500000.0 and cfg.tie_word_embeddings
  assert cfg.rope_scaling == layers.RopeScaling(**LLAMA3_SCALING)
  # ``save_pretrained`` writes the tied table once: no ``lm_head.weight``, and no ``lm_head``.
  state_dict = {k: v for k, v in state_dict_numpy(ref).items() if k != "lm_head.weight"}
  params = layouts.load_state_dict(layouts.hf_entries(cfg), state_dict, cfg.block)
  abstract = jax.eval_shape(LlamaForCausalLM(cfg).init, jax.random.key(0),
                            jnp.zeros((1, 4), jnp.int32))
  assert set(abstract["params"]) == set(params) == {"model"}
  tokens, mask = padded_batch(np.random.default_rng(7), cfg.vocab_size, 3, LLAMA3_SEQ,
                              [LLAMA3_SEQ, 33, 5])
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(LlamaForCausalLM(cfg).apply({"params": params}, tokens, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-4)
  beyond = valid & (np.arange(LLAMA3_SEQ) >= LLAMA3_SCALING["original_max_position_embeddings"])
  assert beyond.sum() == 12 + 5
  np.testing.assert_allclose(got[beyond], want[beyond], rtol=1e-4, atol=1e-4)
  # The scaling is what makes them agree.
  unscaled = LlamaForCausalLM(dataclasses.replace(cfg, rope_scaling=None))
  assert np.abs(np.asarray(unscaled.apply({"params": params}, tokens, mask)) - got)[valid].max() > 1


@pytest.mark.parametrize("head_dim,theta,factor,low,high,original", [
    (32, 500000.0, 8.0, 1.0, 4.0, 28), (128, 500000.0, 8.0, 1.0, 4.0, 8192),
    (64, 500000.0, 32.0, 1.0, 4.0, 8192), (32, 10000.0, 4.0, 0.75, 2.0, 16)])
def test_rope_inv_freq_matches_transformers_llama3(head_dim, theta, factor, low, high, original):
  """Every band (kept, interpolated, divided) against ``_compute_llama3_parameters``: the same
  formula, up to one fp32 rounding (1 ulp, ~1e-7 relative)."""
  scaling = dict(rope_type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                 original_max_position_embeddings=original)
  hf_cfg = transformers.LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2,
                                    head_dim=head_dim, rope_theta=theta,
                                    rope_scaling=dict(scaling),
                                    max_position_embeddings=4 * original)
  want = modeling_rope_utils._compute_llama3_parameters(hf_cfg)[0].numpy()
  got = np.asarray(layers.rope_inv_freq(head_dim, theta, layers.RopeScaling(**scaling)))
  assert got.shape == (head_dim // 2,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
  unscaled = np.asarray(layers.rope_inv_freq(head_dim, theta))
  wavelength = 2 * math.pi / unscaled
  kept, divided = wavelength < original / high, wavelength > original / low
  assert kept.any() and divided.any() and (~kept & ~divided).any()  # and some interpolated
  np.testing.assert_array_equal(got[kept], unscaled[kept])


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
    h = ref.model(input_ids=torch.tensor(tokens),
                  attention_mask=torch.tensor(mask)).last_hidden_state
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
  for kind, want in (("linear", 0.0), ("sigmoid", 0.5)):  # zero kernel and bias: the reference
    cfg = dataclasses.replace(cfg, value_head=kind, value_head_bias_init=0.0)
    variables = ValueModel(cfg).init(jax.random.key(0), tokens)
    out = nn.meta.unbox(variables)["params"]["value_head"]["out"]
    assert out["kernel"].shape == (32, 1) and not np.any(out["kernel"]) and not np.any(out["bias"])
    np.testing.assert_array_equal(ValueModel(cfg).apply(variables, tokens), want)
  with pytest.raises(ValueError, match="value_head='conv'"):
    LlamaConfig(value_head="conv")


def test_hf_config_rejects_unsupported_features(tmp_path):
  transformers.LlamaConfig(
      hidden_size=32, num_attention_heads=4, intermediate_size=64,
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


def test_unsupported_rope_scaling_is_an_error_naming_it(tmp_path):
  """Only ``llama3`` scaling is implemented: any other type is an error naming it (and the file),
  never a silently different model; so are unknown or missing fields of a ``llama3`` entry."""
  old = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "rope_theta": 1e6}
  llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
  cases = [
      ({"rope_scaling": {"type": "dynamic", "factor": 2.0}},
       r"config\.json: rope_scaling\.rope_type='dynamic' is not supported \(expected 'default' "
       r"or one of \('llama3',\)\)"),
      ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
       r"config\.json: rope_parameters\.rope_type='yarn' is not supported"),
      ({"rope_scaling": {**llama3, "beta_fast": 32}},
       r"config\.json: rope_scaling: unknown RopeScaling key\(s\) \['beta_fast'\]"),
      ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "factor": 2.0}},
       r"config\.json: rope_parameters fields \['factor'\] are not supported with rope_type "
       r"'default'"),
  ]
  for extra, match in cases:
    (tmp_path / "config.json").write_text(json.dumps({**old, **extra}))
    with pytest.raises(ValueError, match=match):
      LlamaConfig.from_hf_config(tmp_path / "config.json")
  del llama3["factor"]
  (tmp_path / "config.json").write_text(json.dumps({**old, "rope_scaling": llama3}))
  with pytest.raises(TypeError, match="factor"):
    LlamaConfig.from_hf_config(tmp_path / "config.json")
  # Built directly (a preset, a config dict): the same names.
  with pytest.raises(ValueError, match=r"rope_scaling rope_type='linear' is not supported"):
    LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
  with pytest.raises(ValueError, match=r"LlamaConfig\.rope_scaling: unknown RopeScaling key"):
    LlamaConfig(rope_scaling={"type": "llama3"})
