"""LLaMA (the reference and value models) against ``transformers.LlamaForCausalLM``, the value
head, and HF ``config.json`` loading."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from torch_reference import hf_llama, padded_batch, state_dict_numpy
from wmtp_jax.checkpoints import layouts
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
