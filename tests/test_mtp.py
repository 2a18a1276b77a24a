"""``MTPTransformer``: parity with Meta's wiring (``torch_reference.TorchMTP``, a PyTorch
transcription of Meta's ``llama/model.py``), its hidden / trunk / value outputs, bf16 compute, and
Meta's ``params.json``."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from torch_reference import TINY_MTP, TorchMTP, padded_batch, randomize_, state_dict_numpy
from wmtp_jax.checkpoints import layouts
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

META_7B_1T_4 = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "vocab_size": 32000,
                "multiple_of": 256, "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5,
                "rope_theta": 10000.0, "n_future_tokens": 4}


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
