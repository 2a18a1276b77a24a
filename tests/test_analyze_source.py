"""analyze.source: what each kind of --run gives, and a clear error for each bad one."""

import json

import pytest

from test_analyze_collect import make_run
from wmtp_jax.analyze import source as source_lib


@pytest.fixture(scope="module")
def job(small_dataset, tmp_path_factory):
  """A main job's WORKDIR of a verifiable run (its critic beside it)."""
  root = tmp_path_factory.mktemp("job")
  make_run(root, "verifiable", small_dataset)
  return root


def test_a_main_jobs_workdir_gives_its_verifiable_run_with_the_critic(job, small_dataset):
  source = source_lib.find(job)
  assert source.kind == "critic"
  assert source.model == job / "critic" / "model"
  assert source.dataset == small_dataset and source.split == "valid"
  assert source.settings.scheme == "gae_exp" and source.n_heads == 2
  assert source.ema is None and not source.rewards   # no metrics logged; correct samples only
  assert source_lib.find(job / "critic").label.startswith("critic run")


def test_a_verifiable_run_whitens_with_its_last_logged_ema(tmp_path, small_dataset):
  run = make_run(tmp_path, "verifiable", small_dataset)
  rows = [{"step": 1, "ema_mean": 0.0, "ema_std": 1.0}, {"step": 2, "loss": 1.0},
          {"step": 3, "ema_mean": 0.25, "ema_std": 0.5}, {"step": 3, "time/checkpoint_s": 1.0}]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert source_lib.find(run).ema == (0.25, 0.5)


def test_a_converted_checkpoint_needs_data(job, small_dataset):
  with pytest.raises(ValueError, match="converted checkpoint.*--data DATASET_DIR"):
    source_lib.find(job / "critic" / "model")
  source = source_lib.find(job / "critic" / "model", data=str(small_dataset), split="test")
  assert (source.kind, source.split, source.max_len) == ("critic", "test", 160)
  with pytest.raises(ValueError, match="an MTP model, neither a critic .* nor a reference"):
    source_lib.find(job / "verifiable" / "model", data=str(small_dataset))


def test_bad_runs_are_errors(tmp_path, small_dataset):
  with pytest.raises(FileNotFoundError, match="--run .*nowhere: no such directory"):
    source_lib.find(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="not a run .*no run in a subdirectory"):
    source_lib.find(tmp_path)
  baseline = make_run(tmp_path / "b", "baseline", small_dataset)
  with pytest.raises(ValueError, match="a baseline run has no critic or reference"):
    source_lib.find(baseline)
  with pytest.raises(ValueError, match=r"runs baseline \(baseline\); none has a critic"):
    source_lib.find(tmp_path / "b")
  unfinished = make_run(tmp_path / "u", "critic", small_dataset, export=False)
  with pytest.raises(FileNotFoundError, match="holds no exported model.*has the run finished"):
    source_lib.find(unfinished)
  shared = make_run(tmp_path / "s", "verifiable:shared_head", small_dataset, export=False)
  with pytest.raises(ValueError, match="shared-head verifiable run .*separate critic"):
    source_lib.find(shared)
  (tmp_path / "j").mkdir()
  (tmp_path / "j" / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="j/config.json: not a run config"):
    source_lib.find(tmp_path / "j")
  (tmp_path / "j" / "config.json").write_text('{"pipeline": "rho1"}')
  with pytest.raises(ValueError, match="j/config.json: not a complete run config"):
    source_lib.find(tmp_path / "j")
  with pytest.raises(FileNotFoundError, match="--data .*: no such dataset directory"):
    source_lib.find(tmp_path / "b" / "baseline" / "model", data=str(tmp_path / "none"))
