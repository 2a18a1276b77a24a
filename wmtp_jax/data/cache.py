"""Directories cached under a root and keyed by the parameters that determine their content.

An entry is ``<root>/<kind>-<label>-<hash8>/``: ``hash8`` the first 8 hex digits of the SHA-256
of the parameters (canonical JSON; include a generator version among them), ``label`` a short
readable summary of them (e.g. ``synthetic-s0-1000x100x200-v512-1a2b3c4d``). Different
parameters never share a directory, and a complete entry is never modified: a job reading one
never sees its inputs change.

``cached_dir`` builds a missing entry under an inter-process lock (``fcntl.flock`` on
``<root>/<name>.lock``, kept for the next build) into a temporary sibling ``.<name>.tmp-*``,
writes ``cache.json`` (kind and parameters) into it and renames it into place (``os.rename`` of a
directory: atomic). Two processes asking for the same entry build it once; the second waits for
the lock and reuses it. A crashed build leaves only its temporary directory, which the next
build of that entry removes; the final name holds a complete entry or nothing.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping

log = logging.getLogger(__name__)

MARKER_FILE = "cache.json"  # written last into a built entry: its kind and parameters


def default_root(root: str | os.PathLike | None = None) -> pathlib.Path:
  """``root``, or ``$XDG_CACHE_HOME/wmtp_jax`` (``~/.cache/wmtp_jax``) when it is empty."""
  if root:
    return pathlib.Path(root)
  return pathlib.Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                      "wmtp_jax")


def params_hash(params: Mapping) -> str:
  """8 hex digits of the SHA-256 of ``params`` as canonical JSON (sorted keys)."""
  text = json.dumps(params, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def entry_path(root: str | os.PathLike | None, kind: str, params: Mapping,
               label: str = "") -> pathlib.Path:
  """Where the entry of ``kind`` with ``params`` lives (built or not): ``<root>/<kind>-<label>-
  <hash8>`` (``<kind>-<hash8>`` without a label); ``root`` empty: ``default_root()``."""
  name = "-".join(part for part in (kind, label, params_hash(params)) if part)
  return default_root(root) / name


def _marker(kind: str, params: Mapping) -> dict:
  return {"kind": kind, "params": json.loads(json.dumps(params))}


def _is_complete(path: pathlib.Path, kind: str, params: Mapping) -> bool:
  """Whether ``path`` is the complete entry of these parameters; raises if something else holds
  its name (an entry is never modified, so a foreign or incomplete one cannot be rebuilt)."""
  if not path.exists():
    return False
  try:
    recorded = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    recorded = None
  expected = _marker(kind, params)
  if recorded != expected:
    what = ("is missing or unreadable" if recorded is None else
            f"records other parameters ({', '.join(_differences(recorded, expected)[:6])})")
    raise RuntimeError(f"{path} is not the cached {kind} entry of these parameters (its "
                       f"{MARKER_FILE} {what}); remove it to rebuild it")
  return True


def _differences(a, b, prefix: str = "") -> list[str]:
  """The dotted keys where the JSON values ``a`` and ``b`` differ (``prefix`` before each)."""
  if not (isinstance(a, dict) and isinstance(b, dict)):
    return [] if a == b else [prefix or "(value)"]
  return [d for k in sorted(set(a) | set(b), key=str)
          for d in _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))]


@contextlib.contextmanager
def _locked(lock_path: pathlib.Path) -> Iterator[None]:
  """An exclusive ``fcntl.flock`` on ``lock_path`` (created if missing, never removed: removing
  it would let two processes lock two different files of the same name)."""
  with open(lock_path, "a", encoding="utf-8") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def cached_dir(root: str | os.PathLike | None, kind: str, params: Mapping,
               build_fn: Callable[[pathlib.Path], object], *, label: str = "") -> pathlib.Path:
  """The complete entry of ``kind`` with ``params`` (``entry_path``), built by
  ``build_fn(directory)`` if missing.

  ``build_fn`` writes the content into the (existing, empty) ``directory`` it is given, a
  temporary sibling of the entry renamed into place once it returns. Call it from any number of
  processes: the first builds, the others wait for it under the lock and reuse the result. An
  exception in ``build_fn`` propagates and leaves nothing behind.
  """
  final = entry_path(root, kind, params, label)
  if _is_complete(final, kind, params):
    log.info("reusing cached %s %s", kind, final)
    return final
  final.parent.mkdir(parents=True, exist_ok=True)
  with _locked(final.parent / f"{final.name}.lock"):
    if _is_complete(final, kind, params):  # built by another process while this one waited
      log.info("reusing cached %s %s", kind, final)
      return final
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a crashed build
      log.warning("removing %s (an interrupted build)", stale)
      shutil.rmtree(stale, ignore_errors=True)
    started = time.monotonic()
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
      build_fn(tmp)
      with open(tmp / MARKER_FILE, "w", encoding="utf-8") as f:
        json.dump(_marker(kind, params), f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
      os.rename(tmp, final)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
      os.fsync(dir_fd)  # the rename survives a crash of the machine
    finally:
      os.close(dir_fd)
  log.info("built cached %s %s in %.1f s", kind, final, time.monotonic() - started)
  return final
