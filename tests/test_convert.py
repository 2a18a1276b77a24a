"""Checkpoint conversion: Meta MTP / HF LLaMA → converted directory → our models.

Every source is a tiny random checkpoint written in the real format inside the test: Meta's
``consolidated.pth`` + ``params.json`` from ``torch_reference.TorchMTP`` (Meta's key names and
wiring) and HF ``LlamaForCausalLM`` directories (``save_pretrained`` safetensors, sharded
safetensors, ``pytorch_model.bin`` single and sharded), see ``convert_helpers``. Conversions go
through the CLI entry ``convert.main``; logits are compared with the PyTorch models in fp32 within
1e-4. The exports back are tested in ``test_export``.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from convert_helpers import (CORPUS, LLAMA3_SCALING, LLAMA3_SEQ, LLAMA3_VOCAB, MTP,
                             TOKENIZER_VOCAB, VOCAB, hf_llama3, hf_logits, meta_model, run,
                             tokenizer_dir, write_hf, write_llama3_tokenizer, write_meta)
from torch_reference import TorchMTP, hf_llama, padded_batch

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.data import template
from wmtp_jax.data.tokenizer import TokenizerError, load_tokenizer
from wmtp_jax.models import layers
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer


def test_meta_converts_and_every_head_matches_torch(meta_model):
  cfg, ref, _, converted = meta_model
  assert sorted(p.name for p in converted.iterdir()) == ["model_config.json", "params", "tokenizer"]
  config, params = pretrained.load_pretrained(converted)
  assert config == cfg
  tokens, mask = padded_batch(np.random.default_rng(0), VOCAB, 3, 11, [11, 7, 1])
  with torch.no_grad():
    want = ref(torch.tensor(tokens), torch.tensor(mask)).numpy()
  got = np.asarray(MTPTransformer(config).apply({"params": params}, tokens, mask))
  assert got.shape == (3, 11, cfg.n_future_tokens, VOCAB)
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-4)
  tokenizer = transformers.AutoTokenizer.from_pretrained(converted / "tokenizer")
  assert len(tokenizer) == TOKENIZER_VOCAB <= config.vocab_size
  assert len(pretrained.load_tokenizer(converted)) == TOKENIZER_VOCAB


def test_bf16_storage_and_load_overrides(tmp_path, meta_model, tokenizer_dir):
  cfg, ref, src, converted = meta_model
  run("meta", "--src", src, "--dst", tmp_path / "bf16", "--dtype", "bf16",
      "--tokenizer", tokenizer_dir)
  config, params = pretrained.load_pretrained(tmp_path / "bf16")
  assert config.param_dtype == "bfloat16"
  table = params["tok_embeddings"]["embedding"]
  assert table.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      table, ref.tok_embeddings.weight.detach().numpy().astype(jnp.bfloat16))
  # Overrides: cast while reading (fp32 store → bf16 params), strict field names.
  config, params = pretrained.load_pretrained(converted, param_dtype="bfloat16")
  assert config.param_dtype == "bfloat16" and params["output"]["kernel"].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match=r"model_config\.json \(overrides\).*n_futre_tokens"):
    pretrained.load_pretrained(converted, n_futre_tokens=2)


@pytest.mark.parametrize("layout", ["safetensors", "sharded_safetensors", "bin", "sharded_bin"])
def test_hf_layouts_convert_and_match_transformers(tmp_path, tokenizer_dir, layout):
  _, ref = hf_llama(seed=3, vocab_size=VOCAB)
  src = write_hf(tmp_path / "src", ref, layout, tokenizer_dir)
  summary = run("hf", "--src", src, "--dst", tmp_path / "ours")
  assert summary["kind"] == "llama" and summary["source_dtypes"] == {"float32": 3 + 9 * 2}
  config, params = pretrained.load_pretrained(tmp_path / "ours")
  assert isinstance(config, LlamaConfig) and config.num_key_value_heads == 2
  tokens, mask = padded_batch(np.random.default_rng(1), VOCAB, 3, 10, [10, 6, 3])
  got = np.asarray(LlamaForCausalLM(config).apply({"params": params}, tokens, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], hf_logits(ref, tokens, mask)[valid],
                             rtol=1e-4, atol=1e-4)


def test_llama3_checkpoint_and_tokenizer(tmp_path):
  """A LLaMA-3.2-style checkpoint (``save_pretrained`` safetensors: vocabulary 128256, tied
  embeddings, ``llama3`` RoPE scaling, θ = 500000) with LLaMA-3's tokenizer files: its conversion
  matches transformers beyond the original context, and the carried tokenizer has LLaMA-3's BOS
  and EOS, which the Alpaca template puts around a row. The instruct models' EOS, ``<|eot_id|>``,
  too."""
  _, ref = hf_llama3(seed=8, vocab_size=LLAMA3_VOCAB)
  src = tmp_path / "src"
  ref.save_pretrained(src)
  write_llama3_tokenizer(src)
  summary = run("hf", "--src", src, "--dst", tmp_path / "ours")
  assert summary["kind"] == "llama" and summary["source_dtypes"] == {"float32": 2 + 9 * 2}
  assert summary["n_params"] == sum(p.numel() for p in ref.parameters())  # the table once
  config, params = pretrained.load_pretrained(tmp_path / "ours")
  assert config.tie_word_embeddings and set(params) == {"model"}
  assert config.rope_theta == 500000.0 and config.vocab_size == LLAMA3_VOCAB
  assert config.rope_scaling == layers.RopeScaling(**LLAMA3_SCALING)
  tokens, mask = padded_batch(np.random.default_rng(9), LLAMA3_VOCAB, 2, LLAMA3_SEQ,
                              [LLAMA3_SEQ, 31])
  got = np.asarray(LlamaForCausalLM(config).apply({"params": params}, tokens, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], hf_logits(ref, tokens, mask)[valid],
                             rtol=1e-4, atol=1e-4)

  record = {"instruction": "Add one.", "output": "def f(x):\n    return x + 1\n",
            "is_correct": 1.0}
  instruct = write_llama3_tokenizer(tmp_path / "instruct", eos_token="<|eot_id|>")
  for tokenizer, eos_id in ((pretrained.load_tokenizer(tmp_path / "ours"), 128001),
                            (load_tokenizer(instruct), 128009)):
    assert len(tokenizer) == LLAMA3_VOCAB
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|begin_of_text|>", 128000)
    assert tokenizer.eos_token_id == eos_id
    assert tokenizer("def f(x):").input_ids[0] == 128000  # as LLaMA-3's post-processor does
    row = template.encode(record, tokenizer, max_len=400)
    assert row.tokens[0] == 128000 and row.tokens[-1] == eos_id
    prompt_len = len(tokenizer.encode(template.format_prompt(record), add_special_tokens=False))
    assert np.all(row.labels[:1 + prompt_len] == IGNORE_INDEX)
    np.testing.assert_array_equal(row.labels[1 + prompt_len:], row.tokens[1 + prompt_len:])
    assert tokenizer.decode(row.tokens[1 + prompt_len:-1]) == record["output"]


def test_sentencepiece_tokenizer_from_meta_release_layout(tmp_path):
  """Meta's release keeps ``tokenizer.model`` beside the model folder: found, carried, loadable."""
  spm = pytest.importorskip("sentencepiece")
  model_file = tmp_path / "tokenizer.model"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS * 10), model_prefix=str(tmp_path / "tokenizer"),
      vocab_size=60, model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      hard_vocab_limit=False, minloglevel=2)
  assert model_file.is_file()
  cfg = MTPConfig(**MTP)
  src = write_meta(tmp_path / "7B_1T_3", cfg, TorchMTP(cfg))
  run("meta", "--src", src, "--dst", tmp_path / "ours")
  assert sorted(p.name for p in (tmp_path / "ours" / "tokenizer").iterdir()) == [
      "tokenizer.model", "tokenizer_config.json"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "ours" / "tokenizer")
  ids = tokenizer("def f(x):").input_ids
  assert ids[0] == 1 and max(ids) < 60  # BOS first, as LLaMA's tokenizer does


# ----------------------------------------------------------------------------------------------
# Strictness: every error names the offending keys; nothing is left behind.
# ----------------------------------------------------------------------------------------------
def test_meta_n_future_tokens_inconsistent_with_the_file(tmp_path, meta_model, tokenizer_dir):
  _, _, src, _ = meta_model
  wrong = tmp_path / "wrong"
  shutil.copytree(src, wrong)
  params = json.loads((wrong / "params.json").read_text())
  (wrong / "params.json").write_text(json.dumps({**params, "n_future_tokens": 2}))
  with pytest.raises(ValueError, match=r"consolidated\.pth: state dict does not match the model: "
                     r"missing keys \['layers\.3\.attention\.wk\.weight'.*"
                     r"unexpected keys \['extra_heads\.1\.attention\.wk\.weight'.*"
                     r"the file holds 3 `layers` blocks and 2 `extra_heads`, "
                     r"i\.e\. n_future_tokens=3, n_layers=5"):
    run("meta", "--src", wrong, "--dst", tmp_path / "out", "--tokenizer", tokenizer_dir)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape", "twice"])
def test_hf_key_errors_name_the_keys(tmp_path, tokenizer_dir, problem):
  _, ref = hf_llama(seed=5, vocab_size=VOCAB)
  src = write_hf(tmp_path / "src", ref, "bin", tokenizer_dir)
  state_dict = torch.load(src / "pytorch_model.bin", weights_only=True)
  if problem == "missing":
    del state_dict["model.layers.1.mlp.up_proj.weight"]
    match = r"missing keys \['model\.layers\.1\.mlp\.up_proj\.weight'\]"
  elif problem == "unexpected":
    state_dict["model.layers.2.mlp.up_proj.weight"] = torch.zeros(80, 48)
    match = r"unexpected keys \['model\.layers\.2\.mlp\.up_proj\.weight'\]"
  elif problem == "shape":
    state_dict["model.norm.weight"] = torch.ones(47)
    match = r"wrongly shaped \['model\.norm\.weight: \(47,\) \(expected \(48,\)\)'\]"
  else:
    torch.save({"lm_head.weight": state_dict["lm_head.weight"]}, src / "extra.bin")
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        **dict.fromkeys(state_dict, "pytorch_model.bin"), "lm_head.weight": "extra.bin"}}))
    match = r"pytorch_model\.bin: keys \['lm_head\.weight'\] are also in .*extra\.bin"
  torch.save(state_dict, src / "pytorch_model.bin")
  with pytest.raises(ValueError, match=match):
    run("hf", "--src", src, "--dst", tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_tokenizer_and_destination_errors(tmp_path, meta_model, tokenizer_dir):
  _, _, src, _ = meta_model
  small = tmp_path / "small"
  shutil.copytree(src, small)
  params = json.loads((small / "params.json").read_text())
  (small / "params.json").write_text(json.dumps({**params, "vocab_size": 200}))
  torch_sd = torch.load(small / "consolidated.pth", weights_only=True)
  torch_sd["tok_embeddings.weight"] = torch_sd["tok_embeddings.weight"][:200]
  torch_sd["output.weight"] = torch_sd["output.weight"][:200]
  torch.save(torch_sd, small / "consolidated.pth")
  with pytest.raises(TokenizerError, match=r"params\.json: tokenizer .* has 270 tokens but the "
                     r"model's vocab_size is 200"):
    run("meta", "--src", small, "--dst", tmp_path / "out", "--tokenizer", tokenizer_dir)
  assert not (tmp_path / "out").exists()
  with pytest.raises(FileNotFoundError,
                     match=r"no tokenizer found .*tokenizer\.model.*--tokenizer"):
    run("meta", "--src", src, "--dst", tmp_path / "out")
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "file").write_text("x")
  with pytest.raises(FileExistsError, match="busy exists and is not an empty directory"):
    run("meta", "--src", src, "--dst", tmp_path / "busy", "--tokenizer", tokenizer_dir)
  with pytest.raises(FileNotFoundError, match=r"no params\.json"):
    run("meta", "--src", tmp_path / "busy", "--dst", tmp_path / "out")


def test_cli_errors_are_one_line(tmp_path, meta_model, tokenizer_dir):
  """``python -m wmtp_jax.convert``: a missing source or a used destination is one line on
  stderr (no traceback), exit status 1, nothing written."""
  _, _, src, converted = meta_model
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "file").write_text("x")
  cases = [
      (["hf", "--src", tmp_path / "nope", "--dst", tmp_path / "out"], "nope: no config.json"),
      (["export-hf", "--src", tmp_path / "nope", "--dst", tmp_path / "out"],
       "nope: not a converted checkpoint directory"),
      (["meta", "--src", src, "--dst", tmp_path / "busy", "--tokenizer", tokenizer_dir],
       "busy exists and is not an empty directory"),
      (["export-meta", "--src", converted, "--dst", tmp_path / "busy"],
       "busy exists and is not an empty directory")]
  for argv, message in cases:
    result = subprocess.run([sys.executable, "-m", "wmtp_jax.convert", *map(str, argv)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 1 and not result.stdout, result
    assert result.stderr.startswith("python -m wmtp_jax.convert: error: "), result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
  assert not (tmp_path / "out").exists()
  assert [p.name for p in (tmp_path / "busy").iterdir()] == ["file"]


def test_restore_into_a_4_device_mesh(meta_model):
  """Orbax restores straight into NamedShardings over 4 fake CPU devices."""
  _, _, _, converted = meta_model
  script = textwrap.dedent(f"""
      import jax
      jax.config.update("jax_num_cpu_devices", 4)
      import flax.linen as nn
      import numpy as np
      from wmtp_jax.checkpoints import pretrained
      mesh = jax.make_mesh((4,), ("fsdp",))
      rules = (("embed", "fsdp"), ("mlp", None), ("heads", None), ("kv_heads", None),
               ("head_dim", None), ("vocab", None))
      shardings = lambda abstract: nn.logical_to_mesh_sharding(
          nn.get_partition_spec(abstract), mesh, rules)
      config, params = pretrained.load_pretrained({str(converted)!r}, shardings=shardings)
      _, single = pretrained.load_pretrained({str(converted)!r})
      wq, table = params["trunk_0"]["attention"]["wq"]["kernel"], params["output"]["kernel"]
      assert len(jax.devices()) == 4
      assert wq.sharding == jax.sharding.NamedSharding(mesh, jax.P("fsdp", None, None)), wq.sharding
      assert table.sharding.spec == jax.P("fsdp", None), table.sharding
      assert [s.data.shape for s in wq.addressable_shards] == [(16, 4, 16)] * 4
      assert params["norm"]["weight"].sharding.spec == jax.P("fsdp")
      for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      print("ok")
  """)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
  assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
