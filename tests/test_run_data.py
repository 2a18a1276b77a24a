"""The data of a run: process 0 generates the synthetic dataset before any process reads it."""

import pathlib

import pytest

from conftest import SMALL_DATA, tiny_config
from wmtp_jax.data import run_data


@pytest.mark.parametrize("process", [0, 1])
def test_synthetic_dataset_written_by_process_0_then_a_barrier(process, tmp_path, monkeypatch):
  """Process 0 generates the dataset, then every process passes the barrier (the real one: a
  no-op wait with one process) before it returns the directory."""
  events = []
  ensure, sync = run_data.synthetic.cached_dataset, run_data.multihost_utils.sync_global_devices
  monkeypatch.setattr(run_data.jax, "process_index", lambda: process)
  monkeypatch.setattr(run_data.synthetic, "cached_dataset",
                      lambda *a, **k: events.append("generate") or ensure(*a, **k))
  monkeypatch.setattr(run_data.multihost_utils, "sync_global_devices",
                      lambda name: events.append(name) or sync(name))
  config = tiny_config("baseline", pathlib.Path(""))
  config.data.update(dir="", cache_dir=str(tmp_path / "cache"))
  config.data.synthetic.update(SMALL_DATA)
  directory = run_data.dataset_dir(config.data)
  assert directory == run_data.synthetic.cached_path(tmp_path / "cache", **SMALL_DATA)
  assert directory.parent == tmp_path / "cache"
  assert events == (["generate"] if process == 0 else []) + [run_data.DATASET_BARRIER]
  assert (directory / "train.jsonl").is_file() == (process == 0)
