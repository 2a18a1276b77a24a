"""JSONL files: streaming reads with located errors, and atomic writes.

Record ``i`` of a file is its ``i``-th non-blank line (files written here have no blank lines, so
record index = line index). Every reading error is a :class:`~wmtp_jax.data.schema.DataError`
whose message starts with ``"{path}:{lineno}: "``; by default each object is validated as a
solution record (``wmtp_jax.data.schema``).
"""

import contextlib
import gzip
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from wmtp_jax.data.schema import DataError, validate_problem, validate_record

log = logging.getLogger(__name__)


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
