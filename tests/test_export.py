"""Exports of a converted directory (``checkpoints.export`` through ``python -m wmtp_jax.convert
export-hf | export-meta``): round trips reproduce every tensor, ``transformers`` loads the HF
export, the MTP heads 1 … n−1 of ``extra_heads.safetensors`` match the PyTorch reference, an HF
export of an MTP model imports back (``hf``) as the same MTP model, and an inconsistent tree /
config pair is an error."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
import transformers
from convert_helpers import (LLAMA3_SCALING, LLAMA3_SEQ, LLAMA3_VOCAB, MTP, TOKENIZER_VOCAB, VOCAB,
                             hf_llama3, hf_logits, meta_model, run, tokenizer_dir, write_hf,
                             write_llama3_tokenizer, write_meta)
from flax import traverse_util
from torch_reference import TorchMTP, hf_llama, padded_batch, randomize_

import flax.linen as nn
import jax

from wmtp_jax.checkpoints import export, pretrained
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig


def test_meta_round_trip_reproduces_every_tensor(tmp_path, tokenizer_dir):
  """fp16 on disk (as Meta ships it) → fp32 Orbax → export-meta defaults to fp16: bit-exact."""
  cfg = MTPConfig(**MTP)
  ref = TorchMTP(cfg)
  randomize_(ref, seed=1)
  src = write_meta(tmp_path / "src", cfg, ref, dtype=torch.float16)
  run("meta", "--src", src, "--dst", tmp_path / "ours", "--tokenizer", tokenizer_dir)
  assert pretrained.read_config(tmp_path / "ours").param_dtype == "float32"
  summary = run("export-meta", "--src", tmp_path / "ours", "--dst", tmp_path / "back")
  assert summary["dtype"] == "float16"
  want = torch.load(src / "consolidated.pth", weights_only=True)
  got = torch.load(tmp_path / "back" / "consolidated.pth", weights_only=True)
  assert sorted(got) == sorted(want)
  for key in want:
    assert got[key].dtype == torch.float16 and got[key].is_contiguous(), key
    assert torch.equal(got[key], want[key]), key
  assert (json.loads((tmp_path / "back" / "params.json").read_text())
          == json.loads((src / "params.json").read_text()))
  assert (tmp_path / "back" / "tokenizer.json").is_file()


def test_hf_round_trip_is_exact_and_loads_in_transformers(tmp_path, tokenizer_dir):
  _, ref = hf_llama(seed=4, vocab_size=VOCAB)
  src = write_hf(tmp_path / "src", ref, "safetensors", tokenizer_dir)
  run("hf", "--src", src, "--dst", tmp_path / "ours")
  run("export-hf", "--src", tmp_path / "ours", "--dst", tmp_path / "back",
      "--max_shard_size", "100KB")
  back = tmp_path / "back"
  index = json.loads((back / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  got = {}
  for name in set(index["weight_map"].values()):
    got.update(safetensors.torch.load_file(back / name))
  want = ref.state_dict()
  assert sorted(got) == sorted(want)
  for key in want:
    assert torch.equal(got[key], want[key]), key

  exported = transformers.LlamaForCausalLM.from_pretrained(back, dtype=torch.float32).eval()
  config, params = pretrained.load_pretrained(tmp_path / "ours")
  tokens, mask = padded_batch(np.random.default_rng(2), VOCAB, 2, 9, [9, 4])
  ours = np.asarray(LlamaForCausalLM(config).apply({"params": params}, tokens, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(hf_logits(exported, tokens, mask)[valid], ours[valid],
                             rtol=1e-4, atol=1e-4)
  assert len(transformers.AutoTokenizer.from_pretrained(back)) == TOKENIZER_VOCAB


def test_llama3_round_trip_is_exact_and_loads_in_transformers(tmp_path, tokenizer_dir):
  """Tied embeddings and ``llama3`` RoPE scaling: ``hf`` then ``export-hf`` writes the source's
  tensors (no ``lm_head.weight``) and its RoPE / tying config, which transformers loads into the
  same logits as ours, beyond the original context; importing the export gives the same config."""
  _, ref = hf_llama3(seed=10)
  src = write_hf(tmp_path / "src", ref, "safetensors", tokenizer_dir)
  run("hf", "--src", src, "--dst", tmp_path / "ours")
  run("export-hf", "--src", tmp_path / "ours", "--dst", tmp_path / "back")
  back = tmp_path / "back"
  got = safetensors.torch.load_file(back / "model.safetensors")
  want = safetensors.torch.load_file(src / "model.safetensors")
  assert "lm_head.weight" not in want and sorted(got) == sorted(want)
  for key in want:
    assert torch.equal(got[key], want[key]), key
  written = json.loads((back / "config.json").read_text())
  source = json.loads((src / "config.json").read_text())
  for key in ("tie_word_embeddings", "rope_parameters", "vocab_size", "max_position_embeddings"):
    assert written[key] == source[key], key
  assert written["rope_parameters"] == {**LLAMA3_SCALING, "rope_theta": 500000.0}

  exported = transformers.LlamaForCausalLM.from_pretrained(back, dtype=torch.float32).eval()
  assert exported.lm_head.weight is exported.model.embed_tokens.weight
  config, params = pretrained.load_pretrained(tmp_path / "ours")
  tokens, mask = padded_batch(np.random.default_rng(11), VOCAB, 2, LLAMA3_SEQ, [LLAMA3_SEQ, 30])
  ours = np.asarray(LlamaForCausalLM(config).apply({"params": params}, tokens, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(hf_logits(exported, tokens, mask)[valid], ours[valid],
                             rtol=1e-4, atol=1e-4)
  run("hf", "--src", back, "--dst", tmp_path / "again")
  assert pretrained.read_config(tmp_path / "again") == config


def test_mtp_export_hf_next_token_path_and_extra_heads(tmp_path, meta_model):
  cfg, ref, _, converted = meta_model
  run("export-hf", "--src", converted, "--dst", tmp_path / "hf")
  hf = transformers.LlamaForCausalLM.from_pretrained(
      tmp_path / "hf", dtype=torch.float32, attn_implementation="eager").eval()
  assert hf.config.num_hidden_layers == cfg.n_layers - cfg.n_future_tokens + 1

  tokens = np.random.default_rng(3).integers(0, VOCAB, size=(2, 8))
  mask = np.ones_like(tokens)
  with torch.no_grad():
    want = ref(torch.tensor(tokens), torch.tensor(mask)).numpy()  # [B, S, n, V]
    out = hf(input_ids=torch.tensor(tokens), output_hidden_states=True)
  np.testing.assert_allclose(out.logits.numpy(), want[:, :, 0], rtol=1e-4, atol=1e-4)

  # Extra heads: each ``extra_heads.{k-1}.*`` group is a LlamaDecoderLayer reading the trunk output.
  with safetensors.safe_open(tmp_path / "hf" / export.EXTRA_HEADS_FILE, framework="pt") as f:
    assert f.metadata()["n_future_tokens"] == str(cfg.n_future_tokens)
    extra = {k: f.get_tensor(k) for k in f.keys()}
  trunk_BxSxD = out.hidden_states[cfg.n_trunk_layers]  # input of layer n_trunk (= head 0)
  positions = torch.arange(tokens.shape[1])[None]
  cos_sin = hf.model.rotary_emb(trunk_BxSxD, positions)
  causal = torch.triu(torch.full((8, 8), float("-inf")), diagonal=1)[None, None]
  for k in range(1, cfg.n_future_tokens):
    prefix = f"extra_heads.{k - 1}."
    layer = transformers.models.llama.modeling_llama.LlamaDecoderLayer(hf.config, layer_idx=0)
    layer.load_state_dict({n.removeprefix(prefix): w for n, w in extra.items()
                           if n.startswith(prefix)}, strict=True)
    with torch.no_grad():
      h = layer(trunk_BxSxD, attention_mask=causal, position_ids=positions,
                position_embeddings=cos_sin)
      logits = hf.lm_head(hf.model.norm(h)).numpy()
    np.testing.assert_allclose(logits, want[:, :, k], rtol=1e-4, atol=1e-4)
  assert len(extra) == 9 * (cfg.n_future_tokens - 1)


def _same_params(got: dict, want: dict) -> None:
  assert traverse_util.flatten_dict(got).keys() == traverse_util.flatten_dict(want).keys()
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_hf_import_of_an_mtp_export_restores_every_head(tmp_path, meta_model):
  """export-hf then ``hf``: the MTP model again (kind ``mtp``), every head, the same config and
  bit-identical params. An export written before ``extra_heads.safetensors`` carried the MTP
  fields (its metadata names ``n_future_tokens`` only) gives the same model, its FFN width as
  ``multiple_of``."""
  cfg, _, _, converted = meta_model
  run("export-hf", "--src", converted, "--dst", tmp_path / "hf")
  summary = run("hf", "--src", tmp_path / "hf", "--dst", tmp_path / "back")
  assert summary["kind"] == "mtp"
  _, want = pretrained.load_pretrained(converted)
  config, params = pretrained.load_pretrained(tmp_path / "back")
  assert config == cfg
  _same_params(params, want)

  old = tmp_path / "old"
  shutil.copytree(tmp_path / "hf", old)
  heads = safetensors.torch.load_file(old / export.EXTRA_HEADS_FILE)
  safetensors.torch.save_file(heads, old / export.EXTRA_HEADS_FILE, metadata={
      "format": "pt", "n_future_tokens": str(cfg.n_future_tokens)})
  assert run("hf", "--src", old, "--dst", tmp_path / "old_back")["kind"] == "mtp"
  config, params = pretrained.load_pretrained(tmp_path / "old_back")
  assert config.block == cfg.block and config.multiple_of == cfg.block.ffn_hidden
  assert config == dataclasses.replace(cfg, multiple_of=config.multiple_of,
                                       ffn_dim_multiplier=config.ffn_dim_multiplier)
  _same_params(params, want)


def test_hf_import_of_a_one_head_mtp_export(tmp_path, tokenizer_dir):
  """``n_future_tokens=1``: ``extra_heads.safetensors`` holds no tensor, yet says MTP."""
  cfg = MTPConfig(**{**MTP, "n_layers": 3, "n_future_tokens": 1})
  ref = TorchMTP(cfg)
  randomize_(ref, seed=2)
  src = write_meta(tmp_path / "src", cfg, ref)
  run("meta", "--src", src, "--dst", tmp_path / "ours", "--tokenizer", tokenizer_dir)
  run("export-hf", "--src", tmp_path / "ours", "--dst", tmp_path / "hf")
  assert run("hf", "--src", tmp_path / "hf", "--dst", tmp_path / "back")["kind"] == "mtp"
  config, params = pretrained.load_pretrained(tmp_path / "back")
  assert config == cfg
  _same_params(params, pretrained.load_pretrained(tmp_path / "ours")[1])


def test_hf_import_of_an_mtp_export_checks_its_config(tmp_path, meta_model):
  """extra_heads metadata that disagrees with config.json is an error naming both files."""
  _, _, _, converted = meta_model
  run("export-hf", "--src", converted, "--dst", tmp_path / "hf")
  hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
  hf_config["intermediate_size"] += 32
  (tmp_path / "hf" / "config.json").write_text(json.dumps(hf_config))
  with pytest.raises(ValueError, match=r"extra_heads\.safetensors: .*ffn_hidden.* does not "
                     r"match .*config\.json"):
    run("hf", "--src", tmp_path / "hf", "--dst", tmp_path / "back")
  assert not (tmp_path / "back").exists()


def test_load_and_export_check_the_tree_against_the_config(tmp_path, meta_model):
  cfg, _, _, converted = meta_model
  broken = tmp_path / "broken"
  shutil.copytree(converted, broken)
  data = json.loads((broken / pretrained.CONFIG_FILE).read_text())
  data["config"]["n_future_tokens"] = 2
  (broken / pretrained.CONFIG_FILE).write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"params does not match the model: missing keys "
                     r"\['trunk_2/attention/wk/kernel'.*unexpected keys "
                     r"\['head_2/attention/wk/kernel'.*n_future_tokens=3, n_layers=5"):
    pretrained.load_pretrained(broken)
  data["config"]["n_futre_tokens"] = 3
  (broken / pretrained.CONFIG_FILE).write_text(json.dumps(data))
  with pytest.raises(ValueError, match=r"model_config\.json: unknown MTPConfig key\(s\) "
                     r"\['n_futre_tokens'\]"):
    pretrained.load_pretrained(broken)

  # Export takes a params tree + config: an inconsistent pair is an error, nothing is written.
  _, params = pretrained.load_pretrained(converted)
  flat = traverse_util.flatten_dict(params)
  del flat[("head_1", "ffn_norm", "weight")]
  with pytest.raises(ValueError, match=r"missing keys \['head_1/ffn_norm/weight'\]"):
    export.export_hf(cfg, flat, tmp_path / "hf", dtype="float32")
  assert not (tmp_path / "hf").exists()
  with pytest.raises(ValueError, match="export-meta writes Meta's MTP layout"):
    export.export_meta(LlamaConfig(), {}, tmp_path / "meta", dtype="float32")


def test_hf_export_takes_the_special_token_ids_of_its_tokenizer(tmp_path):
  """A LLaMA-3 tokenizer's BOS / EOS (128000 / 128001; no pad token) reach ``config.json``, so
  that generation in transformers stops at its EOS rather than at transformers' default id 2."""
  tokenizer = write_llama3_tokenizer(tmp_path / "tokenizer")
  cfg = LlamaConfig(vocab_size=LLAMA3_VOCAB, hidden_size=16, intermediate_size=32,
                    num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=True)
  params = jax.jit(LlamaForCausalLM(cfg).init)(jax.random.key(0), np.zeros((1, 4), np.int32))
  flat = traverse_util.flatten_dict(jax.device_get(nn.meta.unbox(params["params"])))
  export.export_hf(cfg, flat, tmp_path / "hf", dtype="float32", tokenizer=tokenizer)
  written = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert (written["bos_token_id"], written["eos_token_id"]) == (128000, 128001)
  assert written.get("pad_token_id") is None
  assert (tmp_path / "hf" / "tokenizer.json").is_file()
