"""Tests of wmtp_jax.data.records: schema, JSONL errors, atomic writes, index, RecordStore."""

import concurrent.futures
import json
import logging
import multiprocessing
import os
import pickle

import numpy as np
import pytest

from wmtp_jax.data import records
from wmtp_jax.data.records import (DataError, RecordStore, atomic_write, build_index, read_jsonl,
                                   read_problems, validate_problem, validate_record, write_jsonl)


def _record(pid="p1", correct=True, output="print(1)\n", **extra):
  return {"instruction": "Do it.", "input": "", "output": output, "problem_id": pid,
          "is_correct": correct, **extra}


def _sample_records():
  """Records of three problems, interleaved, with non-ASCII text and a U+2028 separator."""
  return [
      _record("a", True, "x = 'é'\n", difficulty=3, source="t"),
      _record("b", False, "y = 2\u2028z = 3\n", difficulty=7),
      _record("a", False, "x = 1\n", difficulty=3),
      _record("c", True, "pass\n"),
      _record("a", True, "x = 'ü' * 2\n" * 5, difficulty=3),
      _record("b", True, "日本語 = 1\n", difficulty=7),
  ]


# ----------------------------------------------------------------------------- validation


def test_validate_record_accepts_schema_and_extra_keys():
  validate_record(_record(difficulty=2, source="mbpp", language="python3"))


@pytest.mark.parametrize("record, message", [
    ({k: v for k, v in _record().items() if k != "problem_id"}, "missing field(s) 'problem_id'"),
    (_record(correct="true"), "'is_correct' must be bool"),
    (_record(difficulty=True), "'difficulty' must be int"),
    (_record(difficulty="3"), "'difficulty' must be int"),
    (_record(output=3), "'output' must be str"),
    (_record(output=" \n "), "empty response"),
    (["not", "an", "object"], "expected a JSON object"),
])
def test_validate_record_rejects(record, message):
  with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validate_record(record)


def test_validate_problem():
  problem = {"problem_id": "p", "prompt": "x", "source": "s", "tests": [
      {"input": "1", "output": "2"}], "test_kinds": ["public"], "time_limit_s": 2,
             "memory_limit_mb": 256, "difficulty": 7}
  validate_problem(problem)
  with pytest.raises(DataError, match="test_kinds has 2 entries for 1 tests"):
    validate_problem({**problem, "test_kinds": ["public", "private"]})
  with pytest.raises(DataError, match="unknown test kind"):
    validate_problem({**problem, "test_kinds": ["hidden"]})
  with pytest.raises(DataError, match=r"tests\[0\]"):
    validate_problem({**problem, "tests": [{"input": 1, "output": "2"}]})
  with pytest.raises(DataError, match="'time_limit_s' must be int or float"):
    validate_problem({**problem, "time_limit_s": "2s"})


# ----------------------------------------------------------------------------- reading

_BAD_LINES = {
    "malformed JSON": b'{"instruction": "x",\n',
    "missing field(s) 'is_correct'": json.dumps(
        {k: v for k, v in _record().items() if k != "is_correct"}).encode() + b"\n",
    "'problem_id' must be str": json.dumps(_record(pid=7)).encode() + b"\n",
    "invalid UTF-8": b'{"instruction": "\xff\xfe", "input": ""}\n',
    "empty response": json.dumps(_record(output="")).encode() + b"\n",
}


@pytest.mark.parametrize("message", sorted(_BAD_LINES))
def test_read_jsonl_names_file_and_line(tmp_path, message):
  path = tmp_path / "train.jsonl"
  good = json.dumps(_record()).encode() + b"\n"
  path.write_bytes(good + b"\n" + _BAD_LINES[message] + good)  # bad record on line 3
  with pytest.raises(DataError) as info:
    list(read_jsonl(path))
  assert str(info.value).startswith(f"{path}:3: ")
  assert message in str(info.value)
  assert isinstance(info.value, ValueError)


def test_read_jsonl_skip_counts_and_logs(tmp_path, caplog):
  path = tmp_path / "train.jsonl"
  good = [json.dumps(_record(pid=f"p{i}")).encode() + b"\n" for i in range(3)]
  bad = [_BAD_LINES[k] for k in sorted(_BAD_LINES)]
  path.write_bytes(good[0] + b"".join(bad) + good[1] + b"   \n" + good[2])
  reader = read_jsonl(path, on_error="skip")
  with caplog.at_level(logging.WARNING):
    got = list(reader)
  assert [r["problem_id"] for r in got] == ["p0", "p1", "p2"]
  assert (reader.n_read, reader.n_skipped) == (3, len(bad))
  assert reader.errors[0].startswith(f"{path}:2: ")
  assert f"skipped {len(bad)} bad line(s)" in caplog.text


def test_read_jsonl_without_validation_and_arguments(tmp_path):
  path = tmp_path / "raw.jsonl"
  path.write_text('{"a": 1}\n[1, 2]\n')
  assert list(read_jsonl(path, validate=None)) == [{"a": 1}, [1, 2]]
  with pytest.raises(ValueError, match="on_error"):
    read_jsonl(path, on_error="ignore")
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    read_jsonl(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- writing


def test_atomic_write_replaces_on_success_only(tmp_path):
  path = tmp_path / "out.txt"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with atomic_write(path) as f:
      f.write("partial")
      raise RuntimeError("boom")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["out.txt"]
  with atomic_write(path) as f:
    f.write("new é\n")
  assert path.read_bytes() == "new é\n".encode()
  with pytest.raises(RuntimeError):
    with atomic_write(tmp_path / "fresh.bin", "wb") as f:
      f.write(b"x")
      raise RuntimeError("boom")
  assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_file_mode_follows_umask(tmp_path):
  with atomic_write(tmp_path / "a") as f:
    f.write("x")
  with open(tmp_path / "b", "w") as f:
    f.write("x")
  assert os.stat(tmp_path / "a").st_mode == os.stat(tmp_path / "b").st_mode


def test_write_jsonl_roundtrip_and_validation(tmp_path):
  path = tmp_path / "train.jsonl"
  data = _sample_records()
  assert write_jsonl(path, data) == len(data)
  assert list(read_jsonl(path)) == data
  before = path.read_bytes()
  with pytest.raises(DataError, match=rf"{path}: record 1: empty response"):
    write_jsonl(path, [data[0], _record(output="")])
  assert path.read_bytes() == before


def test_read_problems(tmp_path):
  path = tmp_path / "test.problems.jsonl"
  problems = [{"problem_id": "p", "prompt": "x", "source": "s", "answer": "3"}]
  write_jsonl(path, problems, validate=validate_problem)
  assert read_problems(path) == problems
  path.write_text('{"problem_id": "p", "prompt": "x"}\n')
  with pytest.raises(DataError, match=rf"^{path}:1: missing field\(s\) 'source'"):
    read_problems(path)


# ----------------------------------------------------------------------------- index + store


def _indexed(tmp_path, data=None, **kwargs):
  path = tmp_path / "train.jsonl"
  write_jsonl(path, data or _sample_records())
  return path, build_index(path, None, **kwargs)


def test_build_index_files_and_map(tmp_path):
  path, meta = _indexed(tmp_path)
  data = _sample_records()
  offsets = np.load(tmp_path / "train.offsets.npy")
  assert offsets.dtype == np.int64 and offsets.shape == (len(data),)
  assert json.loads((tmp_path / "train.meta.json").read_text()) == meta
  assert meta["n_records"] == len(data)
  assert (meta["tokenizer"], meta["length_unit"]) == (None, "utf8_bytes")
  pim = meta["problem_index_map"]
  assert pim["a"] == {"difficulty": 3, "correct_indices": [0, 4], "incorrect_indices": [2],
                      "correct_token_lengths": [_bytes_len(data[0]), _bytes_len(data[4])],
                      "incorrect_token_lengths": [_bytes_len(data[2])]}
  assert (pim["b"]["correct_indices"], pim["b"]["incorrect_indices"]) == ([5], [1])
  assert pim["c"]["difficulty"] is None
  raw = path.read_bytes()
  for i, offset in enumerate(offsets):
    assert json.loads(raw[offset:].split(b"\n", 1)[0]) == data[i]


def _bytes_len(r):
  return len((r["instruction"] + r["input"] + r["output"]).encode()) + 1


def test_build_index_lengths_with_tokenizer_and_length_fn(tmp_path):
  class Tok:  # the slice of the transformers tokenizer API build_index uses
    name_or_path = "tok/dir"

    def __call__(self, texts, add_special_tokens):
      assert not add_special_tokens
      return {"input_ids": [t.split() for t in texts]}

  path = tmp_path / "train.jsonl"
  data = _sample_records()
  write_jsonl(path, data)
  meta = build_index(path, Tok())
  assert (meta["tokenizer"], meta["length_unit"]) == ("tok/dir", "tokens")
  expected = [len((r["instruction"] + r["input"] + r["output"]).split()) + 1 for r in data]
  assert meta["problem_index_map"]["a"]["correct_token_lengths"] == [expected[0], expected[4]]
  meta = build_index(path, Tok(), length_fn=lambda r: len(r["output"]))
  assert meta["problem_index_map"]["b"]["incorrect_token_lengths"] == [len(data[1]["output"])]


def test_build_index_streams_in_chunks(tmp_path, monkeypatch):
  monkeypatch.setattr(records, "_INDEX_CHUNK", 2)
  _, meta = _indexed(tmp_path)
  monkeypatch.setattr(records, "_INDEX_CHUNK", 1024)
  _, meta_one_chunk = _indexed(tmp_path)
  assert meta == meta_one_chunk


def test_build_index_errors(tmp_path):
  data = _sample_records()
  data[2] = {**data[2], "difficulty": 4}
  path = tmp_path / "train.jsonl"
  write_jsonl(path, data)
  with pytest.raises(DataError, match=rf"^{path}:3: problem 'a' has difficulty 4"):
    build_index(path, None)
  path.write_text(json.dumps(_record()) + "\n{oops\n")
  with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON"):
    build_index(path, None)
  assert not (tmp_path / "train.meta.json").exists()


def test_record_store_random_access(tmp_path):
  path, meta = _indexed(tmp_path)
  store = RecordStore(path)
  data = _sample_records()
  assert len(store) == len(data) and store.meta == meta
  assert [store[i] for i in range(len(store))] == data == list(read_jsonl(path))
  assert store[-1] == data[-1] and store[np.int64(2)] == data[2]
  with pytest.raises(IndexError):
    store[len(data)]
  assert "n_records=6" in repr(store)


def test_record_store_pickles_and_reads_from_threads(tmp_path):
  path, _ = _indexed(tmp_path)
  store = RecordStore(path)
  store[0]  # opens the file before pickling
  clone = pickle.loads(pickle.dumps(store))
  order = list(range(len(store))) * 50
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    got = list(pool.map(clone.__getitem__, order))
  assert got == [store[i] for i in order]
  clone.close()
  store.close()


def test_record_store_reads_in_worker_processes(tmp_path):
  """Grain worker processes receive the data source pickled, as here."""
  path, _ = _indexed(tmp_path)
  store = RecordStore(path)
  store[0]
  context = multiprocessing.get_context("forkserver")
  with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
    got = list(pool.map(store.__getitem__, range(len(store))))
  assert got == _sample_records()


def test_record_store_detects_stale_or_missing_index(tmp_path):
  path, _ = _indexed(tmp_path)
  with open(path, "a") as f:
    f.write(json.dumps(_record()) + "\n")
  with pytest.raises(DataError, match="stale"):
    RecordStore(path)
  (tmp_path / "train.offsets.npy").unlink()
  with pytest.raises(FileNotFoundError, match="train.offsets.npy"):
    RecordStore(path)


def test_record_store_validates_records(tmp_path):
  path, _ = _indexed(tmp_path)
  raw = path.read_bytes().replace(b'"is_correct": true', b'"is_correct": 1   ', 1)  # same size
  path.write_bytes(raw)
  with pytest.raises(DataError, match=r"record 0 \(byte 0\): field 'is_correct' must be bool"):
    RecordStore(path)[0]
