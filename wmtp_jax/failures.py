"""How a job ends: the exit statuses of ``python -m wmtp_jax.main`` and the known failure classes,
each told in one line that names its culprit (the traceback goes to ``WORKDIR/log.txt``).

Exit statuses: ``FINISHED`` 0; ``FAILED`` 1; ``PREEMPTED`` 75 (``EX_TEMPFAIL``, "try again"):
SIGTERM or SIGINT stopped the job after a checkpoint, and the same command resumes it.

Known failure classes (``describe``): a full disk (the path and its filesystem), permission denied
(the path), a missing file (the file), a corrupt checkpoint
(``checkpoints.integrity.CorruptCheckpointError``), a checked error of this package (a
``ValueError`` / ``FloatingPointError`` / ``OSError`` raised by its own code, whose message is
written for the user); ``unknown_config_key`` tells an unknown ``--config.<key>``.
"""

import difflib
import errno
import os
import pathlib
import re
import shutil

from wmtp_jax.checkpoints import integrity

FINISHED, FAILED, PREEMPTED = 0, 1, 75

_PACKAGE = pathlib.Path(__file__).resolve().parent
# Libraries that wrap the OS error in their own message (TensorStore under Orbax).
_NO_SPACE = re.compile(r"No space left on device|os_error_code='?28\b")
# The file, else the database, a TensorStore write error names (most specific first).
_QUOTED_PATHS = (re.compile(r'Failed writing: "(/[^"]+)"'), re.compile(r'local file "(/[^"]+)"'))


def describe(error: BaseException) -> str | None:
  """One line naming the culprit when ``error`` (or an exception it was raised from) is of a known
  failure class, else ``None``: an unknown error is told by its traceback."""
  chain = _chain(error)
  for e in chain:
    if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or _NO_SPACE.search(str(e)):
      return _disk_full(e)
  for e in chain:
    if isinstance(e, integrity.CorruptCheckpointError):
      return f"corrupt checkpoint: {_first_line(e)}"
    if isinstance(e, PermissionError):
      return f"permission denied: {e.filename or _first_line(e)}"
    if isinstance(e, FileNotFoundError):
      return f"missing file: {e.filename}" if e.filename else f"missing file: {_first_line(e)}"
  if isinstance(error, (ValueError, FloatingPointError, OSError)) and _raised_here(error):
    return f"{type(error).__name__}: {_first_line(error)}"
  return None


def one_line(error: BaseException) -> str:
  """``describe(error)``, or the type and first line of an unknown error."""
  return describe(error) or f"{type(error).__name__}: {_first_line(error)}"


def unknown_config_key(config, key: str) -> str | None:
  """``"unknown config key 'train.stepz' (did you mean 'train.steps'?)"`` when the dotted ``key``
  (of a ``--config.<key>=value`` flag) is not in ``config``; ``None`` when it is."""
  node, parts = config, key.split(".")
  for i, part in enumerate(parts):
    if not hasattr(node, "keys"):
      return None  # a field of a non-dict value: ml_collections' own error applies
    if part not in node:
      close = difflib.get_close_matches(part, list(node.keys()), n=1)
      where = ".".join(parts[:i])
      if close:
        guess = ".".join([*parts[:i], close[0], *parts[i + 1:]])
        return f"unknown config key {key!r} (did you mean {guess!r}?)"
      return f"unknown config key {key!r} (config{'.' + where if where else ''} has " \
             f"{', '.join(sorted(node.keys()))})"
    node = node[part]
  return None


def _chain(error: BaseException) -> list[BaseException]:
  """``error`` and the exceptions it was raised from or during, outermost first."""
  seen: list[BaseException] = []
  while error is not None and all(error is not e for e in seen):
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  if isinstance(error, KeyError) and text.startswith(("'", '"')):
    text = text[1:-1]
  return text.splitlines()[0] if text else type(error).__name__


def _raised_here(error: BaseException) -> bool:
  """Whether the innermost frame of ``error``'s traceback is in this package's code."""
  tb = error.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and _PACKAGE in pathlib.Path(tb.tb_frame.f_code.co_filename).parents


def _disk_full(error: BaseException) -> str:
  """``disk full: no space left writing PATH (filesystem MOUNT: SIZE, FREE free)``."""
  path = getattr(error, "filename", None)
  for pattern in _QUOTED_PATHS:
    if not path and (m := pattern.search(str(error))):
      path = m.group(1)
  if not path:
    return f"disk full: {_first_line(error)}"
  mount = _mount_point(pathlib.Path(path))
  usage = shutil.disk_usage(mount)
  return (f"disk full: no space left on device writing {path} (filesystem {mount}: "
          f"{_size(usage.total)}, {_size(usage.free)} free)")


def _mount_point(path: pathlib.Path) -> pathlib.Path:
  path = path.absolute()
  while not path.exists():
    path = path.parent
  while not os.path.ismount(path):
    path = path.parent
  return path


def _size(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"
