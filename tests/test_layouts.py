"""``checkpoints.layouts``: strict state-dict loading (errors name the keys) and entry tables
that cover the models, with layouts that invert exactly."""

import numpy as np
import pytest

from convert_helpers import MTP, VOCAB
from torch_reference import TINY_MTP, TorchMTP, hf_llama, state_dict_numpy
from wmtp_jax.checkpoints import layouts, pretrained
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig


def test_strict_state_dict_errors_name_the_keys():
  cfg = MTPConfig(**TINY_MTP)
  sd = state_dict_numpy(TorchMTP(cfg))
  entries = layouts.meta_entries(cfg)

  missing = {k: v for k, v in sd.items() if k != "layers.0.attention.wq.weight"}
  with pytest.raises(ValueError,
                     match=r"ckpt: .*missing keys \['layers\.0\.attention\.wq\.weight'\]"):
    layouts.load_state_dict(entries, missing, cfg.block, where="ckpt")

  wrong = {**sd, "norm.weight": np.zeros(3, np.float32)}
  with pytest.raises(ValueError,
                     match=r"wrongly shaped \['norm\.weight: \(3,\) \(expected \(64,\)\)'\]"):
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


def test_entry_tables_cover_the_models_and_layouts_invert_exactly():
  mtp, llama = MTPConfig(**MTP), LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80,
                                             num_hidden_layers=2, num_attention_heads=6,
                                             num_key_value_heads=2)
  main, extra = layouts.mtp_hf_entries(mtp)
  rng = np.random.default_rng(4)
  for config, entries in [(mtp, layouts.meta_entries(mtp)), (mtp, {**main, **extra}),
                          (llama, layouts.hf_entries(llama))]:
    flax_shapes = {}
    for key, entry in entries.items():
      w = rng.normal(size=entry.shape).astype(np.float32)
      flax_w = layouts.to_flax(entry, w, config.block)
      np.testing.assert_array_equal(layouts.from_flax(entry, flax_w, config.block), w, err_msg=key)
      flax_shapes[entry.path] = flax_w.shape
    pretrained.check_params(config, flax_shapes, where=type(config).__name__)
