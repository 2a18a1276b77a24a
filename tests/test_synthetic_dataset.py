"""Tests of wmtp_jax.data.synthetic.dataset: the synthetic task's dataset directory.

The dataset files (records, problems, tokenizer, index), labels re-checked in the sandbox, token
lengths, determinism, the dataset cache and the CLI. Datasets are small (tens of problems) to keep
the module fast.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wmtp_jax import sandbox
from wmtp_jax.data import jsonl, records, synthetic, template, tokenizer
from wmtp_jax.data.synthetic import dataset as dataset_lib

SMALL = {"n_train": 60, "n_valid": 10, "n_test": 20, "seed": 0}
MAX_SEQ_LEN = 256  # of the tiny model trained on this data by configs/verifiable.py


def _files(root: Path) -> dict[str, bytes]:
  """Relative path → content of every file under ``root``."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
  return synthetic.write_dataset(tmp_path_factory.mktemp("synthetic") / "data", **SMALL)


def test_dataset_layout_and_index(dataset):
  params = json.loads((dataset / synthetic.PARAMS_FILE).read_text())
  assert params == {"generator_version": synthetic.GENERATOR_VERSION, "seed": 0,
                    "n_train": 60, "n_valid": 10, "n_test": 20, "vocab_size": 512}
  for split in synthetic.SPLITS:
    problems = jsonl.read_problems(dataset / f"{split}.problems.jsonl")
    assert len(problems) == SMALL[f"n_{split}"]
    store = records.RecordStore(dataset / f"{split}.jsonl")
    index = store.meta["problem_index_map"]
    assert list(index) == [p["problem_id"] for p in problems]
    assert store.meta["tokenizer"] == synthetic.TOKENIZER_DIR
    all_indices = sorted(i for e in index.values()
                         for i in e["correct_indices"] + e["incorrect_indices"])
    assert all_indices == list(range(len(store)))
    for problem in problems:
      assert problem["entry_point"] == "f" and problem["source"] == "synthetic"
      assert problem["test_code"].startswith("assert f(")
      entry = index[problem["problem_id"]]
      assert entry["difficulty"] == problem["difficulty"]
      assert entry["correct_indices"][0] == min(entry["correct_indices"] +
                                                entry["incorrect_indices"])  # canonical first
      for label, key in ((True, "correct_indices"), (False, "incorrect_indices")):
        for i in entry[key]:
          record = store[i]
          assert record["problem_id"] == problem["problem_id"]
          assert record["is_correct"] is label
          assert record["instruction"] == problem["prompt"] and record["input"] == ""
          assert record["difficulty"] == problem["difficulty"]
          assert record["source"] == "synthetic"
    n_correct = sum(len(e["correct_indices"]) for e in index.values())
    assert 0 < n_correct < len(store)


def test_records_relabelled_in_sandbox(dataset):
  """Run as an evaluator would (solution + tests, one program each), the canonical solution and
  the incorrect records of every valid problem get their labels."""
  store = records.RecordStore(dataset / "valid.jsonl")
  programs, expected = [], []
  for problem in jsonl.read_problems(dataset / "valid.problems.jsonl"):
    entry = store.meta["problem_index_map"][problem["problem_id"]]
    for i in entry["correct_indices"][:1] + entry["incorrect_indices"]:
      programs.append(store[i]["output"] + "\n" + problem["test_code"])
      expected.append(store[i]["is_correct"])
  assert True in expected and False in expected
  assert [r.passed for r in sandbox.run_many(programs)] == expected


def test_token_lengths_fit_the_tiny_model(dataset):
  tok = tokenizer.load_tokenizer(dataset / synthetic.TOKENIZER_DIR)
  assert len(tok) == 512
  for split in synthetic.SPLITS:
    store = records.RecordStore(dataset / f"{split}.jsonl")
    indexed = {}
    for entry in store.meta["problem_index_map"].values():
      for kind in ("correct", "incorrect"):
        indexed.update(zip(entry[f"{kind}_indices"], entry[f"{kind}_token_lengths"]))
    for i in range(len(store)):
      length = template.example_length(store[i], tok)
      assert length == indexed[i] <= MAX_SEQ_LEN


def test_files_are_deterministic_and_cli(dataset, tmp_path, capsys):
  synthetic.main(["--out", str(tmp_path / "cli"), "--seed", "0", "--n-train", "60",
                  "--n-valid", "10", "--n-test", "20"])
  assert _files(tmp_path / "cli") == _files(dataset)
  out = capsys.readouterr().out
  assert re.search(r"^train: 60 problems, \d+ correct \+ \d+ incorrect", out, re.M)


def test_python_dash_m_entry_point(tmp_path):
  out = subprocess.run([sys.executable, "-m", "wmtp_jax.data.synthetic", "--out", str(tmp_path),
                        "--n-train", "20", "--n-valid", "4", "--n-test", "4"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert re.search(r"^test: 4 problems, ", out.stdout, re.M)
  assert (tmp_path / synthetic.PARAMS_FILE).is_file()


def test_ensure_dataset_reuses_and_regenerates(tmp_path, monkeypatch):
  calls = []
  write_dataset = synthetic.write_dataset

  def counting_write(*args, **kwargs):
    calls.append(kwargs["seed"])
    return write_dataset(*args, **kwargs)

  monkeypatch.setattr(dataset_lib, "write_dataset", counting_write)
  params = {"n_train": 30, "n_valid": 5, "n_test": 5}
  out = tmp_path / "cache"
  assert synthetic.ensure_dataset(out, seed=0, **params) == out
  first = _files(out)
  synthetic.ensure_dataset(out, seed=0, **params)
  assert calls == [0] and _files(out) == first  # reused

  synthetic.ensure_dataset(out, seed=1, **params)  # other parameters: regenerated
  assert calls == [0, 1]
  assert json.loads((out / synthetic.PARAMS_FILE).read_text())["seed"] == 1
  assert _files(out)["train.jsonl"] != first["train.jsonl"]

  (out / "valid.meta.json").unlink()  # incomplete: regenerated
  synthetic.ensure_dataset(out, seed=1, **params)
  assert calls == [0, 1, 1] and (out / "valid.meta.json").is_file()

  monkeypatch.setattr(dataset_lib, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
  synthetic.ensure_dataset(out, seed=1, **params)  # another generator: regenerated
  assert calls == [0, 1, 1, 1]
  synthetic.ensure_dataset(out, seed=1, **params)
  assert calls == [0, 1, 1, 1]


def test_cached_path_is_keyed_by_the_parameters(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  default = synthetic.cached_path()
  assert default.parent == tmp_path / "wmtp_jax"
  assert re.fullmatch(r"synthetic-s0-1000x100x200-v512-[0-9a-f]{8}", default.name)
  assert synthetic.cached_path("", **synthetic.DEFAULT_SIZES, seed=0, vocab_size=512) == default
  assert synthetic.cached_path(tmp_path / "root").parent == tmp_path / "root"
  others = [synthetic.cached_path(**change) for change in (
      {"seed": 1}, {"n_train": 999}, {"n_valid": 99}, {"n_test": 20}, {"vocab_size": 600})]
  assert [p.name.rsplit("-", 1)[0] for p in others] == [
      "synthetic-s1-1000x100x200-v512", "synthetic-s0-999x100x200-v512",
      "synthetic-s0-1000x99x200-v512", "synthetic-s0-1000x100x20-v512",
      "synthetic-s0-1000x100x200-v600"]
  monkeypatch.setattr(dataset_lib, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
  newer = synthetic.cached_path()
  assert newer.name[:-8] == default.name[:-8] and newer != default
  assert len({default, newer, *others}) == 7


# Asks for the cached dataset of the sizes argv[2] (JSON) under the root argv[1]; prints its path.
CACHED_CHILD = r"""
import json, logging, sys
from wmtp_jax.data import synthetic
logging.basicConfig(level=logging.INFO, format="%(message)s")
print(synthetic.cached_dataset(sys.argv[1], workers=1, **json.loads(sys.argv[2])))
"""


def _cached_in_processes(root: Path, *sizes: dict) -> list[tuple[Path, str]]:
  """``(path, log)`` of ``cached_dataset(root, **s)`` for each of ``sizes``, asked concurrently
  by one process each."""
  procs = [subprocess.Popen([sys.executable, "-c", CACHED_CHILD, str(root), json.dumps(s)],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for s in sizes]
  results = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    results.append((Path(out.strip()), err))
  return results


def test_cached_datasets_of_concurrent_jobs(tmp_path):
  """The reported bug: a job with other sizes regenerated the one cached directory in place
  under a running job. Now two jobs with the same parameters build one dataset once, a job with
  other parameters gets a directory of its own, and the first dataset stays as it was."""
  root = tmp_path / "cache"
  a = {"n_train": 20, "n_valid": 4, "n_test": 6}
  b = {**a, "n_test": 4}
  (path_a, log_1), (path_a2, log_2) = _cached_in_processes(root, a, a)
  assert path_a == path_a2 == synthetic.cached_path(root, **a)
  built = f"built cached synthetic {path_a} in"
  assert (log_1 + log_2).count(built) == 1 and (log_1 + log_2).count("records in") == 1
  # pylint: disable=protected-access
  assert json.loads((path_a / synthetic.PARAMS_FILE).read_text()) == dataset_lib.generation_params(
      seed=0, vocab_size=512, **a)
  assert all(p.is_file() for p in dataset_lib._expected_files(path_a))
  # pylint: enable=protected-access
  before = _files(path_a)
  assert len(jsonl.read_problems(path_a / "test.problems.jsonl")) == 6

  (path_b, log_b), (path_a3, log_3) = _cached_in_processes(root, b, a)
  assert path_b == synthetic.cached_path(root, **b) != path_a == path_a3
  assert log_b.count(f"built cached synthetic {path_b} in") == 1
  assert "records in" not in log_3 and f"reusing cached synthetic {path_a}" in log_3
  assert _files(path_a) == before
  assert len(jsonl.read_problems(path_a / "test.problems.jsonl")) == 6
  assert len(jsonl.read_problems(path_b / "test.problems.jsonl")) == 4
  assert sorted(p.name for p in root.iterdir()) == sorted(
      [path_a.name, f"{path_a.name}.lock", path_b.name, f"{path_b.name}.lock"])


def test_every_reader_of_the_default_dataset_agrees_on_its_path(tmp_path, monkeypatch):
  """Training (``run_data``), evaluation (``eval.evaluate_pipeline``) and the benchmark loader
  (``eval.benchmarks``) locate the default dataset through ``cached_path``; training's
  ``config.data.cache_dir`` is the cache root."""
  from types import SimpleNamespace  # pylint: disable=import-outside-toplevel
  from wmtp_jax.config import common as config_lib  # pylint: disable=import-outside-toplevel
  from wmtp_jax.data import run_data  # pylint: disable=import-outside-toplevel
  from wmtp_jax.eval import benchmarks, evaluate_pipeline  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  built = []
  monkeypatch.setattr(synthetic, "cached_dataset",
                      lambda root=None, **sizes: built.append(root) or synthetic.cached_path())
  default = synthetic.cached_path()
  assert default.parent == tmp_path / "wmtp_jax"
  assert benchmarks._default_synthetic_dir() == default  # pylint: disable=protected-access
  config = SimpleNamespace(benchmark="synthetic", data="")
  assert evaluate_pipeline._dataset_dir(config) == default  # pylint: disable=protected-access
  data = config_lib.load("baseline", "tiny").data
  assert data.synthetic.to_dict() == {**synthetic.DEFAULT_SIZES, "seed": 0, "vocab_size": 512}
  assert run_data.dataset_dir(data) == default and built == [None, ""]
  data.cache_dir = str(tmp_path / "root")
  assert run_data.dataset_dir(data) == tmp_path / "root" / default.name
