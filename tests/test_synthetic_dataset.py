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
