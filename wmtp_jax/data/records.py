"""Solution records and evaluation problems: schema, JSONL I/O, atomic writes, index, random access.

Solution record (one JSON object per line of ``{split}.jsonl``, DESIGN §5)::

  {"instruction": str, "input": str, "output": str (non-empty), "problem_id": str,
   "is_correct": bool, "difficulty"?: int, "source"?: str}

Extra keys are allowed and kept. Evaluation problem (one per line of ``{split}.problems.jsonl``)::

  {"problem_id": str, "prompt": str, "source": str,
   "entry_point"?: str, "test_code"?: str, "test_setup_code"?: str,
   "tests"?: [{"input": str, "output": str}], "test_kinds"?: ["public"|"private"|"generated"],
   "answer"?: str, "difficulty"?: int, "time_limit_s"?: float, "memory_limit_mb"?: int}

``test_code`` holds assert-style tests (Python asserts or a ``check()`` call), run after the
program; ``tests`` holds stdin/stdout pairs and ``test_kinds`` (same length) says where each came
from. Index files written by :func:`build_index` next to ``DIR/{split}.jsonl``:

  ``DIR/{split}.offsets.npy``  int64 ``[n_records]``: byte offset of the line of record ``i``
  ``DIR/{split}.meta.json``    ``{"n_records", "file_size", "tokenizer", "length_unit",
                               "problem_index_map": {problem_id: {"difficulty",
                               "correct_indices", "incorrect_indices",
                               "correct_token_lengths", "incorrect_token_lengths"}}}``

Record ``i`` is the ``i``-th non-blank line (files written here have no blank lines, so record
index = line index). Every reading error is a :class:`DataError` whose message starts with
``"{path}:{lineno}: "``.
"""

import array
import contextlib
import gzip
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REQUIRED_FIELDS: Mapping[str, type] = {
    "instruction": str,
    "input": str,
    "output": str,
    "problem_id": str,
    "is_correct": bool,
}
OPTIONAL_FIELDS: Mapping[str, type] = {"difficulty": int, "source": str}

PROBLEM_REQUIRED_FIELDS: Mapping[str, type] = {"problem_id": str, "prompt": str, "source": str}
PROBLEM_OPTIONAL_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "entry_point": str,
    "test_code": str,
    "test_setup_code": str,
    "tests": list,
    "test_kinds": list,
    "answer": str,
    "difficulty": int,
    "time_limit_s": (int, float),
    "memory_limit_mb": int,
}
TEST_KINDS = ("public", "private", "generated")

_INDEX_CHUNK = 1024  # records tokenized per batch by build_index


class DataError(ValueError):
  """A malformed data file or record; the message names the file and line where known."""


# ----------------------------------------------------------------------------- validation


def _check_type(obj: Mapping[str, Any], key: str, expected: type | tuple[type, ...]) -> None:
  value = obj[key]
  types = expected if isinstance(expected, tuple) else (expected,)
  # bool is an int subclass: only accept it where bool itself is expected.
  ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
  if not ok:
    names = " or ".join(t.__name__ for t in types)
    raise DataError(f"field {key!r} must be {names}, got {type(value).__name__} {value!r:.60}")


def check_fields(obj: Any, required: Mapping[str, Any],
                 optional: Mapping[str, Any] | None = None) -> None:
  """Raises :class:`DataError` unless ``obj`` is a dict with the ``required`` keys and every
  present key of ``required`` / ``optional`` has the given type (``bool`` is not an ``int``)."""
  if not isinstance(obj, dict):
    raise DataError(f"expected a JSON object, got {type(obj).__name__}")
  missing = [k for k in required if k not in obj]
  if missing:
    raise DataError(f"missing field(s) {', '.join(map(repr, missing))}")
  for key, expected in required.items():
    _check_type(obj, key, expected)
  for key, expected in (optional or {}).items():
    if key in obj:
      _check_type(obj, key, expected)


def validate_record(record: Any) -> None:
  """Raises :class:`DataError` unless ``record`` is a solution record (module docstring)."""
  check_fields(record, REQUIRED_FIELDS, OPTIONAL_FIELDS)
  if not record["output"].strip():
    raise DataError("empty response: field 'output' is blank")


def validate_problem(problem: Any) -> None:
  """Raises :class:`DataError` unless ``problem`` is an evaluation problem (module docstring)."""
  check_fields(problem, PROBLEM_REQUIRED_FIELDS, PROBLEM_OPTIONAL_FIELDS)
  for i, test in enumerate(problem.get("tests", ())):
    if not (isinstance(test, dict) and isinstance(test.get("input"), str)
            and isinstance(test.get("output"), str)):
      raise DataError(f"tests[{i}] must be {{'input': str, 'output': str}}")
  kinds = problem.get("test_kinds")
  if kinds is not None:
    if len(kinds) != len(problem.get("tests", ())):
      n_tests = len(problem.get("tests", ()))
      raise DataError(f"test_kinds has {len(kinds)} entries for {n_tests} tests")
    bad = sorted({k for k in kinds if k not in TEST_KINDS}, key=str)
    if bad:
      raise DataError(f"unknown test kind(s) {bad}; expected one of {TEST_KINDS}")


# ----------------------------------------------------------------------------- reading


def _scan(path: Path, validate: Callable[[Any], None] | None) -> Iterator[tuple[int, int, Any]]:
  """Yields ``(lineno, byte_offset, parsed)`` for every non-blank line, or a located DataError.

  The generator stays usable after a DataError for a bad line (the next call goes on with the
  following line), which is how ``on_error="skip"`` works.
  """
  offset = 0
  with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      start, offset = offset, offset + len(raw)
      if not raw.strip():
        continue
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield lineno, start, DataError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}")
        continue
      try:
        obj = json.loads(text)
      except json.JSONDecodeError as e:
        yield lineno, start, DataError(
            f"{path}:{lineno}: malformed JSON: {e.msg} (column {e.colno})")
        continue
      if validate is not None:
        try:
          validate(obj)
        except (ValueError, TypeError) as e:
          yield lineno, start, DataError(f"{path}:{lineno}: {e}")
          continue
      yield lineno, start, obj


class JsonlReader:
  """Iterator over the records of a JSONL file (see :func:`read_jsonl`).

  Attributes, final once iteration ends: ``n_read`` (records yielded), ``n_skipped`` (bad lines
  skipped with ``on_error="skip"``), ``errors`` (the messages of the first skipped lines).
  """

  MAX_ERRORS_KEPT = 20

  def __init__(self, path: str | os.PathLike, *, on_error: str = "raise",
               validate: Callable[[Any], None] | None = validate_record):
    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    self.path = Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"{self.path}: no such file")
    self.on_error = on_error
    self.n_read = 0
    self.n_skipped = 0
    self.errors: list[str] = []
    self._items = self._iterate(validate)

  def _iterate(self, validate) -> Iterator[tuple[int, int, Any]]:
    for lineno, offset, obj in _scan(self.path, validate):
      if isinstance(obj, DataError):
        if self.on_error == "raise":
          raise obj
        self.n_skipped += 1
        if len(self.errors) < self.MAX_ERRORS_KEPT:
          self.errors.append(str(obj))
        continue
      self.n_read += 1
      yield lineno, offset, obj
    if self.n_skipped:
      log.warning("%s: skipped %d bad line(s) of %d; first: %s", self.path, self.n_skipped,
                  self.n_read + self.n_skipped, self.errors[0])

  def located(self) -> Iterator[tuple[int, int, Any]]:
    """Yields ``(lineno, byte_offset, record)`` instead of bare records."""
    return self._items

  def __iter__(self) -> "JsonlReader":
    return self

  def __next__(self) -> Any:
    return next(self._items)[2]


def read_jsonl(path: str | os.PathLike, *, on_error: str = "raise",
               validate: Callable[[Any], None] | None = validate_record) -> JsonlReader:
  """Streams the JSON objects of a JSONL file, validated by ``validate`` (None: no validation).

  Blank lines are ignored; a ``.gz`` file is decompressed on the fly. A line that is not UTF-8,
  not JSON or fails ``validate`` raises ``DataError("{path}:{lineno}: ...")``
  (``on_error="raise"``) or is skipped and counted (``on_error="skip"``; the count is
  ``reader.n_skipped`` and a warning is logged at the end).
  """
  return JsonlReader(path, on_error=on_error, validate=validate)


def read_problems(path: str | os.PathLike) -> list[dict]:
  """Reads and validates a ``{split}.problems.jsonl`` file (all problems, in file order)."""
  return list(read_jsonl(path, validate=validate_problem))


# ----------------------------------------------------------------------------- writing


def jsonl_line(obj: Any) -> str:
  """The JSONL line (compact, non-ASCII kept, ``\n``-terminated) written for ``obj``."""
  return json.dumps(obj, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
  """Opens a temporary file next to ``path``; on success fsyncs it and renames it to ``path``.

  Text modes use UTF-8 and ``\\n`` line ends. If the block raises, the temporary file is removed
  and an existing ``path`` is left untouched.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
  path = Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, like open()
  f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}))
  try:
    yield f
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, path)
  except BaseException:
    f.close()
    tmp.unlink(missing_ok=True)
    raise
  _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]], *,
                validate: Callable[[Any], None] | None = validate_record) -> int:
  """Atomically writes one compact UTF-8 JSON object per line; returns the number written.

  Each object is validated first (``validate=None`` skips it); an invalid one raises
  ``DataError("{path}: record {i}: ...")`` and leaves ``path`` untouched.
  """
  n = 0
  with atomic_write(path) as f:
    for n, record in enumerate(records, start=1):
      if validate is not None:
        try:
          validate(record)
        except (ValueError, TypeError) as e:
          raise DataError(f"{path}: record {n - 1}: {e}") from e
      f.write(jsonl_line(record))
  return n


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
