"""Tests of the tiny pretrained bases (training.bases, config.init.base) and of the job's seed
reaching every nested run (wmtp_jax.main.train_prerequisites)."""

import json
import shutil

import pytest

from wmtp_jax import main as main_lib
from wmtp_jax.config import common as config_lib
from wmtp_jax.data import synthetic
from wmtp_jax.data.synthetic import corpus
from wmtp_jax.training import bases, loop

from conftest import SMALL_DATA, tiny_config


@pytest.fixture
def cache_root(small_dataset, tmp_path, monkeypatch):
  """A cache root whose synthetic dataset is the session's small one (copied, not generated),
  and bases pre-trained for 2 steps on a few problems (the real config's steps are minutes)."""
  monkeypatch.setattr(synthetic.dataset, "write_dataset",
                      lambda out, **_: shutil.copytree(small_dataset, out, dirs_exist_ok=True))
  full = bases.base_config

  def small(job):
    c = full(job)
    c.train.update(steps=2, eval_every=2, log_every=1)
    c.corpus.update(n_train=6, n_valid=2)
    c.data.update(batch_size=4, max_len=160, bucket_lengths=(160,), val_batches=1)
    return c

  monkeypatch.setattr(bases, "base_config", small)
  return tmp_path / "cache"


@pytest.fixture
def trained(monkeypatch):
  """The phases ``loop.train`` ran, in order (the real training still runs)."""
  phases = []
  train = loop.train

  def spy(config, workdir, **kwargs):
    phases.append(kwargs.get("phase"))
    return train(config, workdir, **kwargs)

  monkeypatch.setattr(main_lib.loop, "train", spy)
  return phases


def _job(small_dataset, cache_root, **overrides):
  config = tiny_config("baseline", small_dataset)
  config.data.update(dir="", cache_dir=str(cache_root))
  config.data.synthetic.update(SMALL_DATA)
  config.init.base = "mtp"
  for key, value in overrides.items():
    config[key] = value
  return config


def test_a_base_is_built_once_and_rebuilt_for_other_parameters(small_dataset, cache_root,
                                                               trained, tmp_path):
  """Two pre-trainings of 2 steps (each compiles its step: ~1 min on a loaded 2-core machine),
  the least that shows a base reused and another one built."""
  job = _job(small_dataset, cache_root)
  report = main_lib.train_prerequisites(job, tmp_path / "job1")
  assert trained == ["base_mtp"]
  base = report["base_mtp"]
  assert base["status"] == "finished" and not base["cached"] and base["step"] == 2
  path = cache_root / base["model"].rpartition("/")[2]
  assert job.init.checkpoint == base["model"] == str(path)
  assert path.name.startswith("base-mtp-s0-")
  for name in ("model_config.json", "params", "tokenizer", "metrics.jsonl", "cache.json"):
    assert (path / name).exists(), name
  assert not list(cache_root.glob(".base-*"))  # the run directory and temporaries are gone
  assert (path / "tokenizer" / "tokenizer.json").read_bytes() == (
      small_dataset / "tokenizer" / "tokenizer.json").read_bytes()

  again = _job(small_dataset, cache_root)  # a second job reuses it
  report = main_lib.train_prerequisites(again, tmp_path / "job2")
  assert trained == ["base_mtp"]
  assert report["base_mtp"] == {"status": "finished", "model": str(path), "cached": True}
  assert again.init.checkpoint == str(path)

  other = _job(small_dataset, cache_root, seed=1)  # another base parameter: another base
  main_lib.train_prerequisites(other, tmp_path / "job3")
  assert trained == ["base_mtp", "base_mtp"]
  assert other.init.checkpoint != str(path) and "base-mtp-s1-" in other.init.checkpoint

  data = json.loads((path / "model_config.json").read_text())
  data["config"]["dim"] += 16
  (path / "model_config.json").write_text(json.dumps(data))
  with pytest.raises(ValueError, match=rf"{path}: the cached base's model .* \['dim'\]"):
    main_lib.train_prerequisites(_job(small_dataset, cache_root), tmp_path / "job4")


def test_a_cached_base_of_other_parameters_is_an_error(small_dataset, cache_root, trained,
                                                       tmp_path):
  job = _job(small_dataset, cache_root)
  path = bases.entry(bases.base_config(job))
  path.mkdir(parents=True)
  (path / "cache.json").write_text(json.dumps({"kind": "base", "params": {"base_version": 0}}))
  with pytest.raises(RuntimeError, match=rf"{path} is not the cached base entry .*records other "
                                         rf"parameters \(params.base_version, params.config, "
                                         rf"params.corpus_version\)"):
    main_lib.train_prerequisites(job, tmp_path / "job")
  assert trained == []


def test_base_config_follows_the_job(small_dataset, cache_root):
  job = _job(small_dataset, cache_root, seed=3)
  job.model.update(dim=48, n_heads=3, n_kv_heads=3)
  base = bases.base_config(job)
  assert base.seed == 3 and base.model.dim == 48 and base.data.cache_dir == str(cache_root)
  assert base.data.synthetic.to_dict() == job.data.synthetic.to_dict()
  assert bases.entry(base) != bases.entry(bases.base_config(_job(small_dataset, cache_root)))


def test_the_base_key_ignores_what_leaves_the_weights_alone(small_dataset, cache_root,
                                                            monkeypatch):
  base = bases.base_config(_job(small_dataset, cache_root))
  path = bases.entry(base)
  base.train.log_every = 7
  base.evaluate.max_problems = 3
  base.checkpoint.every_steps = 5
  base.data.update(workers=2, dir="/elsewhere")
  assert bases.entry(base) == path
  base.train.steps += 1
  assert bases.entry(base) != path
  base.train.steps -= 1
  monkeypatch.setattr(corpus, "CORPUS_VERSION", corpus.CORPUS_VERSION + 1)  # other documents
  assert bases.entry(base) != path


def test_bad_base_requests_are_errors(small_dataset, cache_root, tmp_path):
  job = _job(small_dataset, cache_root)
  job.init.base = "llama"  # a LLaMA base for an MTP model
  with pytest.raises(ValueError, match="config.init.base='llama': config.model is not a llama"):
    main_lib.train_prerequisites(job, tmp_path)
  job = _job(small_dataset, cache_root)
  job.data.dir = str(small_dataset)
  with pytest.raises(ValueError, match="config.init.base='mtp' pre-trains on the synthetic"):
    main_lib.train_prerequisites(job, tmp_path)
  job = _job(small_dataset, cache_root)
  job.init.base = "gpt"
  with pytest.raises(ValueError, match="config.init.base='gpt'"):
    main_lib.train_prerequisites(job, tmp_path)


def test_tiny_defaults_start_from_bases():
  for name, kind in (("baseline", "mtp"), ("verifiable", "mtp"), ("rho1", "mtp"),
                     ("critic", "llama"), ("ref_tuning", "llama")):
    assert config_lib.load(name, "tiny").init.base == kind, name
    assert config_lib.load(name, "7b").init.base == "", name
  assert config_lib.load("verifiable", "tiny,shared_head").init.base == "mtp"
  assert config_lib.load("baseline", "tiny,ntp").init.base == "llama"
  assert config_lib.load("verifiable", "tiny").critic.run.init.base == "llama"
  assert config_lib.load("rho1", "tiny").reference.run.init.base == "llama"


@pytest.mark.parametrize("pipeline,nested", [("verifiable", "critic"), ("rho1", "reference")])
def test_the_jobs_seed_reaches_nested_runs(pipeline, nested, small_dataset, tmp_path,
                                           monkeypatch):
  runs = {}

  def record(config, workdir, **kwargs):
    runs[kwargs["phase"]] = config.seed
    return loop.Outcome("finished", 1, 1, {}, None, str(workdir / "model"))

  monkeypatch.setattr(main_lib.loop, "train", record)
  config = tiny_config(pipeline, small_dataset)
  config.seed = 7
  main_lib.train_prerequisites(config, tmp_path)
  assert runs == {nested: 7}
  config[nested].run.init.base = "llama"  # and the nested run's own base
  config[nested].run.data.dir = ""
  assert bases.base_config(config[nested].run).seed == 7
