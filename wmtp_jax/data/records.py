"""The byte-offset index of a ``{split}.jsonl`` of solution records, and random access to it.

Index files written by :func:`build_index` next to ``DIR/{split}.jsonl``:

  ``DIR/{split}.offsets.npy``  int64 ``[n_records]``: byte offset of the line of record ``i``
  ``DIR/{split}.meta.json``    ``{"n_records", "file_size", "tokenizer", "length_unit",
                               "problem_index_map": {problem_id: {"difficulty",
                               "correct_indices", "incorrect_indices",
                               "correct_token_lengths", "incorrect_token_lengths"}}}``

Record ``i`` is the ``i``-th non-blank line (``wmtp_jax.data.jsonl``); :class:`RecordStore`
reads it back by offset. The record schema is in ``wmtp_jax.data.schema``.
"""

import array
import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wmtp_jax.data.jsonl import atomic_write, read_jsonl
from wmtp_jax.data.schema import DataError, validate_record

_INDEX_CHUNK = 1024  # records tokenized per batch by build_index


# ----------------------------------------------------------------------------- index


def index_paths(jsonl_path: str | os.PathLike) -> tuple[Path, Path]:
  """``DIR/{split}.jsonl`` → ``(DIR/{split}.offsets.npy, DIR/{split}.meta.json)``."""
  path = Path(jsonl_path)
  stem = path.name.removesuffix(".jsonl")
  return path.with_name(f"{stem}.offsets.npy"), path.with_name(f"{stem}.meta.json")


def _default_lengths(tokenizer, records: list[dict]) -> list[int]:
  """Token count of ``instruction + input + output`` plus one EOS (no BOS), or UTF-8 bytes + 1."""
  texts = [r["instruction"] + r["input"] + r["output"] for r in records]
  if tokenizer is None:
    return [len(t.encode("utf-8")) + 1 for t in texts]
  ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
  return [len(x) + 1 for x in ids]


def build_index(jsonl_path: str | os.PathLike, tokenizer, *,
                length_fn: Callable[[dict], int] | None = None) -> dict:
  """Writes ``{split}.offsets.npy`` and ``{split}.meta.json`` for ``{split}.jsonl``; returns meta.

  One streaming pass; memory is the offsets (8 bytes/record) and the problem map.

  Args:
    jsonl_path: a solution-record file; every line is validated (errors raise ``DataError``).
    tokenizer: a ``transformers`` tokenizer, or None for the tokenizer-free fallback in which
      lengths are UTF-8 byte counts (``meta["length_unit"] == "utf8_bytes"``; bytes bound the
      token count of any byte-level tokenizer from above).
    length_fn: ``record -> int``, the token count of the full formatted example (prompt +
      response + EOS), e.g. ``functools.partial(template.example_length, tokenizer=tok)``.
      Default: the token count of ``instruction + input + output`` (no special tokens) + 1 (EOS).

  Within a problem, records must agree on ``difficulty`` (absent = None).
  """
  path = Path(jsonl_path)
  offsets_path, meta_path = index_paths(path)
  offsets = array.array("q")
  problems: dict[str, dict] = {}

  def flush(chunk: list[tuple[int, int, dict]]) -> None:
    if not chunk:
      return
    records = [r for _, _, r in chunk]
    lengths = ([length_fn(r) for r in records] if length_fn
               else _default_lengths(tokenizer, records))
    for (index, lineno, record), length in zip(chunk, lengths):
      pid = record["problem_id"]
      difficulty = record.get("difficulty")
      entry = problems.setdefault(pid, {
          "difficulty": difficulty, "correct_indices": [], "incorrect_indices": [],
          "correct_token_lengths": [], "incorrect_token_lengths": []})
      if entry["difficulty"] != difficulty:
        raise DataError(f"{path}:{lineno}: problem {pid!r} has difficulty {difficulty!r}, "
                        f"earlier records {entry['difficulty']!r}")
      kind = "correct" if record["is_correct"] else "incorrect"
      entry[f"{kind}_indices"].append(index)
      entry[f"{kind}_token_lengths"].append(int(length))

  chunk: list[tuple[int, int, dict]] = []
  with contextlib.closing(read_jsonl(path).located()) as items:
    for lineno, offset, record in items:
      chunk.append((len(offsets), lineno, record))
      offsets.append(offset)
      if len(chunk) == _INDEX_CHUNK:
        flush(chunk)
        chunk = []
  flush(chunk)

  meta = {
      "n_records": len(offsets),
      "file_size": path.stat().st_size,
      "tokenizer": None if tokenizer is None else str(tokenizer.name_or_path),
      "length_unit": "utf8_bytes" if tokenizer is None and length_fn is None else "tokens",
      "problem_index_map": problems,
  }
  with atomic_write(offsets_path, "wb") as f:
    np.save(f, np.frombuffer(offsets, dtype=np.int64) if offsets else np.zeros(0, np.int64))
  with atomic_write(meta_path) as f:
    json.dump(meta, f, ensure_ascii=False)
  return meta


# ----------------------------------------------------------------------------- random access


class RecordStore:
  """Random access to the records of an indexed ``{split}.jsonl`` (a Grain data source).

  ``len(store)``, ``store[i]`` (validated dict; negative ``i`` counts from the end),
  ``store.meta``. Reads use ``os.pread`` (thread-safe, no shared file position). Picklable: the
  file descriptor and offsets are reopened lazily in each process.
  """

  def __init__(self, jsonl_path: str | os.PathLike, *,
               validate: Callable[[Any], None] | None = validate_record):
    self._offsets: np.ndarray | None = None
    self._fd: int | None = None
    self._pid: int | None = None
    self._lock = threading.Lock()
    self.path = Path(jsonl_path)
    self._validate = validate
    offsets_path, meta_path = index_paths(self.path)
    for p in (self.path, offsets_path, meta_path):
      if not p.is_file():
        raise FileNotFoundError(f"{p}: missing (run build_index / wmtp_jax.data.prepare)")
    with open(meta_path, encoding="utf-8") as f:
      self.meta = json.load(f)
    size = self.path.stat().st_size
    if size != self.meta["file_size"]:
      raise DataError(f"{self.path}: size {size} differs from the indexed size "
                      f"{self.meta['file_size']}; the index is stale, rebuild it")
    self._size = size
    self._n = int(self.meta["n_records"])

  def _open(self) -> tuple[np.ndarray, int]:
    """The offsets and a read-only descriptor, (re)opened once per process."""
    with self._lock:
      if self._fd is None or self._pid != os.getpid():
        offsets_path, _ = index_paths(self.path)
        offsets = np.load(offsets_path, mmap_mode="r")
        if offsets.shape != (self._n,):
          raise DataError(f"{offsets_path}: {offsets.shape[0]} offsets for {self._n} records")
        self._offsets = offsets
        self._fd = os.open(self.path, os.O_RDONLY)
        self._pid = os.getpid()
      return self._offsets, self._fd

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict:
    i = int(index)
    if i < 0:
      i += self._n
    if not 0 <= i < self._n:
      raise IndexError(f"record index {index} out of range for {self._n} records")
    offsets, fd = self._open()
    start = int(offsets[i])
    end = int(offsets[i + 1]) if i + 1 < self._n else self._size
    raw = os.pread(fd, end - start, start)
    where = f"{self.path}: record {i} (byte {start})"
    try:
      record = json.loads(raw.decode("utf-8"))
      if self._validate is not None:
        self._validate(record)
    except (ValueError, TypeError) as e:
      raise DataError(f"{where}: {e}") from e
    return record

  def close(self) -> None:
    if self._fd is not None and self._pid == os.getpid():
      os.close(self._fd)
    self._fd = self._offsets = self._pid = None

  def __del__(self) -> None:
    self.close()

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    del state["_lock"]
    state.update(_fd=None, _offsets=None, _pid=None)
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _lock=threading.Lock())

  def __repr__(self) -> str:
    return f"RecordStore({str(self.path)!r}, n_records={self._n})"
