"""Shared pieces of the conversion tests (``test_convert``, ``test_export``, ``test_layouts``): the
tiny MTP config, a BPE test tokenizer, Meta and HF checkpoint directories written in the real
formats, and the CLI entry ``convert.main``. The test modules import the fixtures
(``tokenizer_dir``, ``meta_model``) by name."""

import json
import shutil

import pytest
import torch
from torch_reference import TorchMTP, randomize_

from wmtp_jax import convert
from wmtp_jax.checkpoints import export
from wmtp_jax.data.tokenizer import train_bpe_tokenizer
from wmtp_jax.models.mtp import MTPConfig

VOCAB = 300  # model vocabulary; the test tokenizer has TOKENIZER_VOCAB ≤ VOCAB entries
TOKENIZER_VOCAB = 270
MTP = dict(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=32,
           ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500.0, n_future_tokens=3)
CORPUS = ["def f(x):\n    return x + 1\n", "print('hello world')\n",
          "for i in range(10):\n    total += i * i\n", "class A:\n    pass\n"] * 5


def run(*argv) -> dict:
  return convert.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer")
  train_bpe_tokenizer(CORPUS, TOKENIZER_VOCAB, path)
  return path


def write_meta(path, cfg: MTPConfig, module: torch.nn.Module, dtype=torch.float32):
  """Meta's release layout: ``consolidated.pth`` (one flat state dict) + ``params.json``."""
  path.mkdir(parents=True)
  torch.save({k: v.to(dtype) for k, v in module.state_dict().items()}, path / "consolidated.pth")
  (path / "params.json").write_text(json.dumps({k: getattr(cfg, k) for k in export.META_PARAMS}))
  return path


@pytest.fixture(scope="module")
def meta_model(tmp_path_factory, tokenizer_dir):
  """A random 3-head Meta MTP checkpoint and its fp32 conversion."""
  cfg = MTPConfig(**MTP)
  ref = TorchMTP(cfg).eval()
  randomize_(ref, seed=0)
  root = tmp_path_factory.mktemp("meta")
  src = write_meta(root / "7B_1T_3", cfg, ref)
  summary = run("meta", "--src", src, "--dst", root / "converted", "--tokenizer", tokenizer_dir)
  assert summary["kind"] == "mtp" and summary["source_dtypes"] == {"float32": 3 + 9 * 5}
  return cfg, ref, src, root / "converted"


def write_hf(path, ref, layout: str, tokenizer_dir):
  """A HF checkpoint directory in one of the on-disk layouts, with tokenizer files."""
  if layout == "safetensors":
    ref.save_pretrained(path)
  elif layout == "sharded_safetensors":
    ref.save_pretrained(path, max_shard_size="100KB")
    assert (path / "model.safetensors.index.json").is_file()
  else:  # pytorch_model.bin, single or in two shards with an index; plus a legacy rotary buffer
    ref.config.save_pretrained(path)
    state_dict = {**ref.state_dict(),
                  "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4)}
    if layout == "bin":
      torch.save(state_dict, path / "pytorch_model.bin")
    else:
      keys = list(state_dict)
      shards = {"pytorch_model-00001-of-00002.bin": keys[:len(keys) // 2],
                "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
      for name, part in shards.items():
        torch.save({k: state_dict[k] for k in part}, path / name)
      (path / "pytorch_model.bin.index.json").write_text(json.dumps(
          {"weight_map": {k: name for name, part in shards.items() for k in part}}))
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copyfile(tokenizer_dir / name, path / name)
  return path


def hf_logits(model, tokens, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
