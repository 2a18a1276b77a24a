"""Config files: variants build the right models, each file loads through ml_collections'
config flags and ``wmtp_jax.main``, nested runs come from their own files, a typo is an error."""

import pathlib
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import pytest

from wmtp_jax.config import common as config_lib
from wmtp_jax.models import layers, presets
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer
from wmtp_jax.training import mesh as mesh_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every config file with each variant it accepts (None: the default, no ``:arg``).
VARIANTS = {
    "baseline": [None, "7b"], "critic": [None, "7b"], "ref_tuning": [None, "7b"],
    "rho1": [None, "7b"], "evaluate": [None, "7b"], "pretrain": ["mtp", "llama"],
    "verifiable": [None, "7b", "tiny,softmax_heads", "7b,shared_head",
                   "shared_head,softmax_heads,7b"],
}
CASES = [(name, arg) for name, args in VARIANTS.items() for arg in args]


def load_config(name: str, arg: str | None = None):
  return config_lib.load(name, arg)


def n_params(model, seq=8):
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, seq), jnp.int32))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


def test_7b_variant_is_meta_7b_1t_4():
  config = load_config("baseline", "7b")
  cfg = presets.build(MTPConfig, config.model, where="config.model")
  assert (cfg.n_trunk_layers, cfg.n_future_tokens, cfg.block.ffn_hidden) == (28, 4, 11008)
  # 2·V·D + D + 32 blocks · (4·D² + 3·D·F + 2·D), D = 4096, F = 11008, V = 32000.
  assert n_params(MTPTransformer(cfg)) == 6_738_415_616


def test_tiny_variant_runs_forward():
  config = load_config("baseline")
  cfg = presets.build(MTPConfig, config.model, where="config.model")
  model = MTPTransformer(cfg)
  tokens = jnp.zeros((2, 16), jnp.int32)
  logits = model.apply(model.init(jax.random.key(0), tokens), tokens)
  assert logits.shape == (2, 16, cfg.n_future_tokens, cfg.vocab_size)
  assert n_params(model) < 5_000_000


def test_sheared_llama_preset_size():
  cfg = LlamaConfig(**presets.llama("sheared_llama_2.7b"))
  assert cfg.block.head_dim == 128 and cfg.block.ffn_hidden == 6912


@pytest.mark.parametrize("name,n_expected,head_dim,factor,tied", [
    # V·D + D·V + D + L·(2·D² + 2·D·K·H + 3·D·F + 2·D), V = 128256, D = 4096, K·H = 1024,
    # F = 14336, L = 32: the published 8.03B.
    ("llama3_8b", 8_030_261_248, 128, None, False),
    ("llama3.1_8b", 8_030_261_248, 128, 8.0, False),
    # Tied: V·D + D + L·(…), D = 2048, K·H = 512, F = 8192, L = 16: the published 1.24B.
    ("llama3.2_1b", 1_235_814_400, 64, 32.0, True)])
def test_llama3_presets_build_with_their_sizes(name, n_expected, head_dim, factor, tied):
  cfg = presets.build(LlamaConfig, presets.llama(name), where=name)
  assert LlamaConfig(**ml_collections.ConfigDict(presets.llama(name))) == cfg
  assert n_params(LlamaForCausalLM(cfg)) == n_expected
  assert (cfg.rope_theta, cfg.vocab_size, cfg.block.head_dim, cfg.tie_word_embeddings) == (
      500000.0, 128256, head_dim, tied)
  if factor is None:  # LLaMA-3.0: 8K positions, no scaling
    assert cfg.rope_scaling is None and cfg.max_position_embeddings == 8192
  else:
    assert cfg.max_position_embeddings == 131072
    assert cfg.rope_scaling == layers.RopeScaling(
        rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192)


def test_config_typos_are_errors():
  config = load_config("baseline")
  with pytest.raises(AttributeError, match="dimm"):
    config.model.dimm = 3
  with pytest.raises(ValueError, match=r"config\.model: unknown MTPConfig key\(s\) \['dimm'\]"):
    presets.build(MTPConfig, {**config.model.to_dict(), "dimm": 3}, where="config.model")
  with pytest.raises(ValueError, match="unknown variant '7B'"):
    load_config("baseline", "7B")
  with pytest.raises(ValueError, match="unknown MTP preset 'huge'"):
    presets.mtp("huge")


# Not a run config: the experiment grid (tests/test_experiment_grid.py loads its variants).
NOT_RUNS = ("experiment",)


def test_every_config_file_is_listed():
  assert sorted([*VARIANTS, *NOT_RUNS]) == sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("name,arg", CASES)
def test_config_flags_loads_each_file(name, arg):
  """``--config=configs/<name>.py[:arg]`` (ml_collections' loader, as ``wmtp_jax.main`` uses it)
  gives the locked config of ``config_lib.load``; the variant is recorded."""
  path = str(ROOT / "configs" / f"{name}.py") + (f":{arg}" if arg else "")
  argv = ["prog", f"--config={path}", "--config.seed=3"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  config = values.config
  assert config.is_locked and config.pipeline == name and config.seed == 3
  expected = load_config(name, arg).to_dict()
  assert config.to_dict() == {**expected, "seed": 3}
  size = (arg or "tiny").split(",")
  assert config.variant.split(",")[0] in size
  with pytest.raises(AttributeError, match="sead"):
    config.sead = 1


def test_nested_runs_come_from_their_files():
  for size in ("tiny", "7b"):
    verifiable = load_config("verifiable", size)
    critic = load_config("critic", size)
    assert verifiable.critic.run.to_dict() == critic.to_dict()
    assert verifiable.critic.model.to_dict() == critic.model.to_dict()
    rho1 = load_config("rho1", size)
    reference = load_config("ref_tuning", size)
    assert rho1.reference.run.to_dict() == reference.to_dict()
    assert rho1.reference.model.to_dict() == reference.model.to_dict()
  assert "critic" not in load_config("verifiable", "7b,shared_head")


def test_variants_and_options():
  config = load_config("verifiable", "softmax_heads,7b,shared_head")
  assert config.variant == "7b,shared_head,softmax_heads"
  assert config.weighting.scheme == "softmax_heads" and config.model.value_head == "mlp"
  assert load_config("verifiable", "").variant == "tiny"
  assert load_config("critic", "7b").required == ("init.checkpoint", "data.dir")
  assert load_config("evaluate", "7b").required == ("checkpoint",)
  with pytest.raises(ValueError, match=r"configs/baseline\.py: unknown variant 'shared_head'"):
    load_config("baseline", "shared_head")
  with pytest.raises(ValueError, match=r"configs/verifiable\.py: unknown variant 'tiny,7b'"):
    load_config("verifiable", "tiny,7b")


def test_load_errors_name_the_path(tmp_path, monkeypatch):
  with pytest.raises(FileNotFoundError, match=r"configs/basline\.py: no such config file"):
    config_lib.load("basline")
  missing = tmp_path / "configs"
  monkeypatch.setattr(config_lib, "CONFIGS_DIR", missing)
  with pytest.raises(FileNotFoundError, match=f"{missing}: no configs folder"):
    config_lib.load("baseline")


def _main(*flags_) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "wmtp_jax.main", *flags_], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_main_reads_config_files_with_options(tmp_path):
  """Through ``python -m wmtp_jax.main``: a typo in a key fails naming it; a 7b variant with an
  option loads and stops at the first required key (before anything is written)."""
  typo = _main("--config=configs/baseline.py", "--config.train.stepz=1",
               f"--workdir={tmp_path / 'typo'}")
  assert typo.returncode != 0 and "stepz" in typo.stderr
  workdir = tmp_path / "7b"
  shared = _main("--config=configs/verifiable.py:7b,shared_head", f"--workdir={workdir}")
  assert shared.returncode != 0
  assert ("config.init.checkpoint is required for variant '7b,shared_head'" in shared.stderr)
  assert not workdir.exists()


def test_evaluate_uses_the_mesh_schema_of_the_training_runs():
  for size in ("tiny", "7b"):
    evaluate = load_config("evaluate", size)
    assert evaluate.mesh.to_dict() == load_config("baseline", size).mesh.to_dict()
    assert mesh_lib.param_rules(evaluate.mesh) == mesh_lib.DEFAULT_RULES
