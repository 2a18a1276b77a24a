"""``wmtp_jax.main``: the frozen models a pipeline needs are trained first; required keys; the
report (process 0 only). How a job ends (exit statuses, report status, console): test_exits.py."""

import json

import pytest

from conftest import tiny_config
from wmtp_jax import main as main_lib
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.config import common as config_lib


def test_main_trains_critic_first_and_required_keys(small_dataset, tmp_path):
  config = tiny_config("verifiable", small_dataset)
  config.critic.run.train.steps = 2
  report = main_lib.run(config, tmp_path)
  assert set(report) == {"critic", "verifiable"}
  written = json.loads((tmp_path / "report.json").read_text())
  assert set(written) == {"status", "critic", "verifiable"} and written["status"] == "finished"
  assert [written[k]["status"] for k in ("critic", "verifiable")] == ["finished", "finished"]
  assert written["critic"]["model"] == str(tmp_path / "critic" / pretrained.RUN_EXPORT_DIR)
  assert pretrained.read_config(tmp_path / "critic" / pretrained.RUN_EXPORT_DIR).value_head == "mlp"
  with pytest.raises(ValueError, match=r"config\.init\.checkpoint is required"):
    main_lib.run(config_lib.load("verifiable", "7b"), tmp_path / "7b")


@pytest.mark.parametrize("process", [0, 1])
def test_only_process_0_writes_the_report(process, tmp_path, monkeypatch):
  monkeypatch.setattr(main_lib.jax, "process_index", lambda: process)
  main_lib.write_report(tmp_path, {"baseline": {"loss": 1.5}})
  written = tmp_path / "report.json"
  assert written.is_file() == (process == 0)
  if process == 0:
    assert json.loads(written.read_text()) == {"baseline": {"loss": 1.5}}
