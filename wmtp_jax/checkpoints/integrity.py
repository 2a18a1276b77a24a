"""Checksum manifests: what we write, we can tell apart from what we read back.

Every checkpoint directory we write (a run checkpoint ``WORKDIR/checkpoints/<step>``, the
``params/`` of a converted directory) gets a manifest ``MANIFEST.sha256`` once it is complete: one
line per file, ``<sha256 hex>  <size in bytes>  <path relative to the directory>``, sorted by
path. ``verify`` recomputes it before a restore; a missing, truncated, extra-large or altered file
is a ``CorruptCheckpointError`` that names the file. Hashing streams each file in 4 MiB chunks on
a few threads (``hashlib`` releases the GIL), so it costs about one sequential read of the
directory.

A directory without a manifest (written before manifests existed, or by another tool) is accepted
with ``required=False`` — it cannot be checked, and ``verify`` says so by returning ``False``.
"""

import concurrent.futures
import hashlib
import os
import pathlib

MANIFEST = "MANIFEST.sha256"
_CHUNK = 4 * 2**20
_THREADS = 4


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's files do not match its manifest (or it has none where one is required)."""


def _files(directory: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _hash_all(paths: list[pathlib.Path]) -> list[str]:
  if len(paths) <= 1:
    return [_sha256(p) for p in paths]
  with concurrent.futures.ThreadPoolExecutor(min(_THREADS, len(paths))) as pool:
    return list(pool.map(_sha256, paths))


def write_manifest(directory: str | os.PathLike) -> pathlib.Path:
  """Hash every file under ``directory`` and write its manifest (atomically, last)."""
  directory = pathlib.Path(directory)
  files = _files(directory)
  digests = _hash_all(files)
  lines = [f"{digest}  {path.stat().st_size}  {path.relative_to(directory).as_posix()}\n"
           for path, digest in zip(files, digests)]
  target = directory / MANIFEST
  tmp = target.with_name(MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    f.writelines(lines)
    f.flush()
    os.fsync(f.fileno())
  tmp.replace(target)
  return target


def read_manifest(directory: pathlib.Path) -> dict[str, tuple[str, int]]:
  """``{relative path: (sha256, size)}`` of ``directory``'s manifest."""
  path = directory / MANIFEST
  entries = {}
  for number, line in enumerate(path.read_text().splitlines(), 1):
    parts = line.split("  ", 2)
    if len(parts) != 3 or not parts[1].isdigit():
      raise CorruptCheckpointError(f"{path}:{number}: malformed manifest line {line!r}")
    entries[parts[2]] = (parts[0], int(parts[1]))
  return entries


def verify(directory: str | os.PathLike, *, required: bool = True) -> bool:
  """Check ``directory`` against its manifest; ``True`` when checked, ``False`` when it has no
  manifest and ``required`` is false. Sizes are compared first (a truncated file is named
  without hashing anything), then the hashes."""
  directory = pathlib.Path(directory)
  if not (directory / MANIFEST).is_file():
    if required:
      raise CorruptCheckpointError(f"{directory}: no {MANIFEST}: the checkpoint was not completely "
                                   f"written (or was written by another tool)")
    return False
  entries = read_manifest(directory)
  for name, (_, size) in entries.items():
    path = directory / name
    if not path.is_file():
      raise CorruptCheckpointError(f"{path}: missing (listed in {directory / MANIFEST})")
    if path.stat().st_size != size:
      raise CorruptCheckpointError(f"{path}: {path.stat().st_size} bytes, the manifest says "
                                   f"{size} (truncated or overwritten)")
  names = list(entries)
  digests = _hash_all([directory / n for n in names])
  for name, digest in zip(names, digests):
    if digest != entries[name][0]:
      raise CorruptCheckpointError(f"{directory / name}: SHA-256 mismatch (the file's bytes changed "
                                   f"after it was written)")
  return True
