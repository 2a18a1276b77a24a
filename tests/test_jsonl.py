"""Tests of wmtp_jax.data.jsonl: located reading errors, skipping, atomic writes."""

import json
import logging
import os

import pytest

from record_samples import make_record, sample_records
from wmtp_jax.data.jsonl import atomic_write, read_jsonl, read_problems, write_jsonl
from wmtp_jax.data.schema import DataError, validate_problem


# ----------------------------------------------------------------------------- reading

_BAD_LINES = {
    "malformed JSON": b'{"instruction": "x",\n',
    "missing field(s) 'is_correct'": json.dumps(
        {k: v for k, v in make_record().items() if k != "is_correct"}).encode() + b"\n",
    "'problem_id' must be str": json.dumps(make_record(pid=7)).encode() + b"\n",
    "invalid UTF-8": b'{"instruction": "\xff\xfe", "input": ""}\n',
    "empty response": json.dumps(make_record(output="")).encode() + b"\n",
}


@pytest.mark.parametrize("message", sorted(_BAD_LINES))
def test_read_jsonl_names_file_and_line(tmp_path, message):
  path = tmp_path / "train.jsonl"
  good = json.dumps(make_record()).encode() + b"\n"
  path.write_bytes(good + b"\n" + _BAD_LINES[message] + good)  # bad record on line 3
  with pytest.raises(DataError) as info:
    list(read_jsonl(path))
  assert str(info.value).startswith(f"{path}:3: ")
  assert message in str(info.value)
  assert isinstance(info.value, ValueError)


def test_read_jsonl_skip_counts_and_logs(tmp_path, caplog):
  path = tmp_path / "train.jsonl"
  good = [json.dumps(make_record(pid=f"p{i}")).encode() + b"\n" for i in range(3)]
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
  data = sample_records()
  assert write_jsonl(path, data) == len(data)
  assert list(read_jsonl(path)) == data
  before = path.read_bytes()
  with pytest.raises(DataError, match=rf"{path}: record 1: empty response"):
    write_jsonl(path, [data[0], make_record(output="")])
  assert path.read_bytes() == before


def test_read_problems(tmp_path):
  path = tmp_path / "test.problems.jsonl"
  problems = [{"problem_id": "p", "prompt": "x", "source": "s", "answer": "3"}]
  write_jsonl(path, problems, validate=validate_problem)
  assert read_problems(path) == problems
  path.write_text('{"problem_id": "p", "prompt": "x"}\n')
  with pytest.raises(DataError, match=rf"^{path}:1: missing field\(s\) 'source'"):
    read_problems(path)
