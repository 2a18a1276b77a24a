"""Tests of wmtp_jax.data.records: the byte-offset index and RecordStore."""

import concurrent.futures
import json
import multiprocessing
import pickle

import numpy as np
import pytest

from record_samples import make_record, sample_records
from wmtp_jax.data import records
from wmtp_jax.data.jsonl import read_jsonl, write_jsonl
from wmtp_jax.data.records import RecordStore, build_index
from wmtp_jax.data.schema import DataError


# ----------------------------------------------------------------------------- index + store


def _indexed(tmp_path, data=None, **kwargs):
  path = tmp_path / "train.jsonl"
  write_jsonl(path, data or sample_records())
  return path, build_index(path, None, **kwargs)


def test_build_index_files_and_map(tmp_path):
  path, meta = _indexed(tmp_path)
  data = sample_records()
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
  data = sample_records()
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
  data = sample_records()
  data[2] = {**data[2], "difficulty": 4}
  path = tmp_path / "train.jsonl"
  write_jsonl(path, data)
  with pytest.raises(DataError, match=rf"^{path}:3: problem 'a' has difficulty 4"):
    build_index(path, None)
  path.write_text(json.dumps(make_record()) + "\n{oops\n")
  with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON"):
    build_index(path, None)
  assert not (tmp_path / "train.meta.json").exists()


def test_record_store_random_access(tmp_path):
  path, meta = _indexed(tmp_path)
  store = RecordStore(path)
  data = sample_records()
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
  assert got == sample_records()


def test_record_store_detects_stale_or_missing_index(tmp_path):
  path, _ = _indexed(tmp_path)
  with open(path, "a") as f:
    f.write(json.dumps(make_record()) + "\n")
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
