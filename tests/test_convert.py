"""Checkpoint conversion: Meta MTP / HF LLaMA → converted directory → our models, exports back.

Every source is a tiny random checkpoint written in the real format inside the test: Meta's
``consolidated.pth`` + ``params.json`` from ``torch_reference.TorchMTP`` (Meta's key names and
wiring) and HF ``LlamaForCausalLM`` directories (``save_pretrained`` safetensors, sharded
safetensors, ``pytorch_model.bin`` single and sharded). Conversions go through the CLI entry
``convert.main``; logits are compared with the PyTorch models in fp32 within 1e-4.
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
import safetensors
import safetensors.torch
import torch
import transformers
from flax import traverse_util
from torch_reference import TorchMTP, hf_llama, padded_batch, randomize_

from wmtp_jax import convert
from wmtp_jax.checkpoints import export, layouts, pretrained
from wmtp_jax.data.tokenizer import TokenizerError, train_bpe_tokenizer
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

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


def _write_hf(path, ref, layout: str, tokenizer_dir):
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


def _hf_logits(model, tokens, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.mark.parametrize("layout", ["safetensors", "sharded_safetensors", "bin", "sharded_bin"])
def test_hf_layouts_convert_and_match_transformers(tmp_path, tokenizer_dir, layout):
  _, ref = hf_llama(seed=3, vocab_size=VOCAB)
  src = _write_hf(tmp_path / "src", ref, layout, tokenizer_dir)
  summary = run("hf", "--src", src, "--dst", tmp_path / "ours")
  assert summary["kind"] == "llama" and summary["source_dtypes"] == {"float32": 3 + 9 * 2}
  config, params = pretrained.load_pretrained(tmp_path / "ours")
  assert isinstance(config, LlamaConfig) and config.num_key_value_heads == 2
  tokens, mask = padded_batch(np.random.default_rng(1), VOCAB, 3, 10, [10, 6, 3])
  got = np.asarray(LlamaForCausalLM(config).apply({"params": params}, tokens, mask))
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], _hf_logits(ref, tokens, mask)[valid],
                             rtol=1e-4, atol=1e-4)


def test_hf_round_trip_is_exact_and_loads_in_transformers(tmp_path, tokenizer_dir):
  _, ref = hf_llama(seed=4, vocab_size=VOCAB)
  src = _write_hf(tmp_path / "src", ref, "safetensors", tokenizer_dir)
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
  np.testing.assert_allclose(_hf_logits(exported, tokens, mask)[valid], ours[valid],
                             rtol=1e-4, atol=1e-4)
  assert len(transformers.AutoTokenizer.from_pretrained(back)) == TOKENIZER_VOCAB


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
  src = _write_hf(tmp_path / "src", ref, "bin", tokenizer_dir)
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
  with pytest.raises(FileNotFoundError, match=r"no tokenizer found .*tokenizer\.model.*--tokenizer"):
    run("meta", "--src", src, "--dst", tmp_path / "out")
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "file").write_text("x")
  with pytest.raises(FileExistsError, match="busy exists and is not an empty directory"):
    run("meta", "--src", src, "--dst", tmp_path / "busy", "--tokenizer", tokenizer_dir)
  with pytest.raises(FileNotFoundError, match=r"no params\.json"):
    run("meta", "--src", tmp_path / "busy", "--dst", tmp_path / "out")


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
