"""Errors of ``checkpointer.load_params`` (``--config.init.checkpoint``, ``--config.critic.
checkpoint``, ``config.checkpoint`` of an evaluation) that say what was meant: a main job's WORKDIR
names the finished runs inside it, and a checkpoint of another kind of model names both kinds in
its first line. The runs are small random models saved with ``pretrained.save_params`` in the
layout of a finished run (``WORKDIR/model``) rather than trained."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from wmtp_jax import convert
from wmtp_jax.checkpoints import checkpointer, pretrained
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

MTP = MTPConfig(dim=32, n_layers=3, n_heads=2, vocab_size=64, multiple_of=16, n_future_tokens=2)
LLAMA = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                    num_attention_heads=2)
CONFIGS = {"mtp": MTP, "llama": LLAMA, "value": LLAMA}


def _abstract(kind: str):
  return nn.meta.unbox(pretrained.abstract_params(CONFIGS[kind], kind))


def _save(path, kind: str):
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), _abstract(kind))
  pretrained.save_params(path, CONFIGS[kind], params, kind=kind)
  return path


def _target(kind: str):
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                      _abstract(kind))


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
  """A main job's WORKDIR: ``baseline/`` (an MTP policy) and ``critic/`` (a value model), each a
  finished run, and ``logs/`` (no model)."""
  workdir = tmp_path_factory.mktemp("runs") / "baseline-tiny"
  _save(workdir / "baseline" / pretrained.RUN_EXPORT_DIR, "mtp")
  _save(workdir / "critic" / pretrained.RUN_EXPORT_DIR, "value")
  (workdir / "logs").mkdir()
  return workdir


def test_a_main_job_directory_names_its_runs(main_job, tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    checkpointer.load_params(main_job, _target("mtp"), where="config.init.checkpoint")
  assert str(info.value) == (
      f"config.init.checkpoint={str(main_job)!r} is a main-job directory; did you mean "
      f"{main_job / 'baseline'} (or {main_job / 'critic'})?")
  for read in (pretrained.read_config, pretrained.load_pretrained):  # export-hf, evaluation
    with pytest.raises(FileNotFoundError) as info:
      read(main_job)
    assert str(info.value) == (f"{main_job} is a main-job directory; did you mean "
                               f"{main_job / 'baseline'} (or {main_job / 'critic'})?")
  with pytest.raises(FileNotFoundError, match="baseline-tiny is a main-job directory; did you"):
    convert.main(["export-hf", "--src", str(main_job), "--dst", str(tmp_path / "hf")])
  with pytest.raises(FileNotFoundError, match=r"neither a converted checkpoint directory nor a "
                     r"finished training run"):
    checkpointer.load_params(main_job / "logs", _target("mtp"), where="config.init.checkpoint")
  restored = checkpointer.load_params(main_job / "baseline", _target("mtp"), where="x")
  assert set(restored) == set(_target("mtp"))


@pytest.mark.parametrize("stored, expected, stored_name, expected_name", [
    ("mtp", "value", "an MTP model", "a LLaMA value model"),
    ("llama", "mtp", "a LLaMA language model", "an MTP model"),
    ("value", "mtp", "a LLaMA value model", "an MTP model"),
    ("value", "llama", "a LLaMA value model", "a LLaMA language model"),
    ("mtp", "llama", "an MTP model", "a LLaMA language model"),
])
def test_a_checkpoint_of_another_kind_names_both_kinds_first(tmp_path, stored, expected,
                                                             stored_name, expected_name):
  run = tmp_path / "run"
  _save(run / pretrained.RUN_EXPORT_DIR, stored)
  with pytest.raises(ValueError) as info:
    checkpointer.load_params(run, _target(expected), where="config.critic.checkpoint")
  first_line = str(info.value).splitlines()[0]
  assert first_line.startswith(
      f"config.critic.checkpoint={str(run)!r} holds {stored_name} (kind {stored!r} in "
      f"{run / pretrained.RUN_EXPORT_DIR / pretrained.CONFIG_FILE}), but {expected_name} "
      f"(kind {expected!r}) is expected here"), first_line
  assert "missing keys" not in str(info.value)


def test_a_value_model_starts_from_a_llama_backbone(tmp_path):
  """The one mix of kinds that is allowed: a LLaMA language model's ``model/…`` starts a value
  model (its ``lm_head`` unread, ``value_head`` left to the caller)."""
  _save(tmp_path / "llama", "llama")
  restored = checkpointer.load_params(tmp_path / "llama", _target("value"), where="x")
  assert set(restored) == {"model"}
