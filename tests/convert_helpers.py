"""Shared pieces of the conversion tests (``test_convert``, ``test_export``, ``test_layouts``): the
tiny MTP config, a BPE test tokenizer, Meta and HF checkpoint directories written in the real
formats, a small LLaMA-3-style HF model and LLaMA-3's tokenizer files, and the CLI entry
``convert.main``. The test modules import the fixtures (``tokenizer_dir``, ``meta_model``) by
name."""

import json
import shutil

import pytest
import torch
import transformers
from tokenizers import (Regex, Tokenizer, decoders, models, pre_tokenizers, processors,
                        trainers)
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


# LLaMA-3 (3.1 / 3.2) features at test size: θ = 500000, ``llama3`` RoPE scaling with a short
# original context, tied embeddings. Head width 32: the 16 RoPE wavelengths 6.3, 14.3, 32.4, …
# fall in all three bands of 28 positions (kept < 28/4 = 7, interpolated, divided > 28/1).
LLAMA3_SCALING = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=28)
LLAMA3_SEQ = 40  # test sequences reach beyond the original context
LLAMA3_VOCAB = 128256  # 128000 BPE entries, then 256 special tokens


def hf_llama3(seed: int, vocab_size: int = VOCAB):
  """A small random LLaMA-3.2-style ``transformers.LlamaForCausalLM`` (eager attention):
  ``(config, model)``."""
  hf_cfg = transformers.LlamaConfig(
      vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-5,
      rope_theta=500000.0, rope_scaling=dict(LLAMA3_SCALING), tie_word_embeddings=True,
      attn_implementation="eager")
  ref = transformers.LlamaForCausalLM(hf_cfg).eval()
  randomize_(ref, seed)
  return hf_cfg, ref


# LLaMA-3's special tokens, ids 128000 … 128255 (Meta-Llama-3-8B's names).
LLAMA3_SPECIAL_TOKENS = (
    ["<|begin_of_text|>", "<|end_of_text|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])
# LLaMA-3's pre-tokenizer split (tiktoken's cl100k pattern with numbers in groups of 1–3).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_llama3_tokenizer(path, eos_token: str = "<|end_of_text|>"):
  """LLaMA-3's tokenizer files at full size: ``tokenizer.json`` (byte-level BPE of 128000 entries,
  a few merges learnt on ``CORPUS``, the rest unreachable fillers; the 256 special tokens; a
  post-processor that prepends ``<|begin_of_text|>``), ``tokenizer_config.json`` and
  ``special_tokens_map.json`` with the fields of Meta's release (``eos_token``: the base models'
  ``<|end_of_text|>``, the instruct models' ``<|eot_id|>``)."""
  path.mkdir(parents=True, exist_ok=True)
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator(CORPUS, trainer=trainers.BpeTrainer(
      vocab_size=400, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  data = json.loads(bpe.to_str())
  vocab = data["model"]["vocab"]
  vocab.update({f"<filler_{i}>": i for i in range(len(vocab), 128000)})
  bpe = Tokenizer.from_str(json.dumps(data))
  bpe.add_special_tokens(LLAMA3_SPECIAL_TOKENS)
  bos = LLAMA3_SPECIAL_TOKENS[0]
  bpe.post_processor = processors.TemplateProcessing(
      single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 128000)])
  bpe.save(str(path / "tokenizer.json"))
  special = {"bos_token": bos, "eos_token": eos_token}
  (path / "special_tokens_map.json").write_text(json.dumps(special))
  (path / "tokenizer_config.json").write_text(json.dumps({
      "added_tokens_decoder": {
          str(128000 + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True}
          for i, t in enumerate(LLAMA3_SPECIAL_TOKENS)},
      **special, "clean_up_tokenization_spaces": True,
      "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
      "tokenizer_class": "PreTrainedTokenizerFast"}))
  return path
