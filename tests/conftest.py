"""Shared fixtures: a small synthetic dataset and tiny run configs."""

import os
import pathlib

import jax
import pytest

from wmtp_jax.config import common as config_lib
from wmtp_jax.data import synthetic

# Implicit rank promotion (``[B, S] * [S]``) hides shape bugs: every test runs with it forbidden.
jax.config.update("jax_numpy_rank_promotion", "raise")

SMALL_DATA = dict(n_train=80, n_valid=12, n_test=16, seed=0, vocab_size=512)
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _shared_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for every JAX subprocess of the test run (each
  ``python -m wmtp_jax.main`` a test starts inherits ``JAX_COMPILATION_CACHE_DIR``), shared by the
  xdist workers and removed with pytest's old temporary directories: runs of one shape compile
  once. In-process compilation is left as it is."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's directory, above each worker's own
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "xla_cache"))


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> pathlib.Path:
  """A small synthetic dataset (generated once per test session, labelled in the sandbox)."""
  return synthetic.ensure_dataset(tmp_path_factory.mktemp("synthetic"), **SMALL_DATA)


def tiny_config(pipeline: str, dataset: pathlib.Path, **train):
  """The tiny config of ``pipeline`` (``"verifiable:shared_head"``: with options) shrunk further
  for tests, reading ``dataset``."""
  name, _, options = pipeline.partition(":")
  config = config_lib.load(name, ",".join(["tiny", options]) if options else "tiny")
  configs = [config]
  for name in ("critic", "reference"):
    if name in config:
      configs.append(config[name].run)
  for c in configs:
    c.data.dir = str(dataset)
    c.init.base = ""  # random weights: no pretrained base (training.bases)
    c.data.batch_size = 8
    c.data.max_len = 160
    c.data.bucket_lengths = (160,)
    c.data.val_batches = 1
    c.train.steps = 4
    c.train.eval_every = 2
    c.train.log_every = 1
    c.train.peak_flops = 1e9
    c.checkpoint.every_steps = 2
    c.evaluate.enabled = False
    for key, value in train.items():
      c.train[key] = value
  shrink = dict(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=16,
                n_future_tokens=2, max_seq_len=160)
  llama = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160)
  for c in configs:
    fields = shrink if "n_future_tokens" in c.model else llama
    for k, v in fields.items():
      c.model[k] = v
  for name in ("critic", "reference"):
    if name in config:
      for k, v in llama.items():
        config[name].model[k] = v
  return config
