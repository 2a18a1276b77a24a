"""Tests of wmtp_jax.data.cache: directories keyed by their parameters, built once atomically.

Builds run in separate processes (``python -c``) where concurrency or a crash is the point: two
processes asking for one entry build it once, different parameters never share a directory, and
a killed build leaves only a temporary directory that the next build removes.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wmtp_jax.data import cache

REPO = Path(__file__).resolve().parents[1]

# A process building the entry (kind "toy", label "t") of the parameters in argv[2] under the
# root argv[1]: its build appends its pid to argv[3] (one line per build), writes a first file,
# waits until the file argv[4] exists (if given), is killed there in mode "kill", and writes the
# second file. It signals "calling" (file argv[5]) just before asking for the entry, and prints
# the entry's path and the content of its second file.
CHILD = r"""
import json, os, pathlib, signal, sys, time
from wmtp_jax.data import cache
root, params, builds, release, calling, mode = sys.argv[1:7]

def build(directory):
  with open(builds, "a", encoding="utf-8") as f:
    f.write(f"{os.getpid()}\n")
  (directory / "first.txt").write_text("first half")
  while release and not os.path.exists(release):
    time.sleep(0.05)
  if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
  (directory / "second.txt").write_text(params)

pathlib.Path(calling).touch()
path = cache.cached_dir(root, "toy", json.loads(params), build, label="t")
print(path, (path / "second.txt").read_text(), sep="\n")
"""


def _start(root: Path, params: dict, tmp: Path, name: str, *, release: str = "",
           mode: str = "build") -> tuple[subprocess.Popen, Path]:
  calling = tmp / f"{name}.calling"
  proc = subprocess.Popen(
      [sys.executable, "-c", CHILD, str(root), json.dumps(params), str(tmp / "builds.txt"),
       release, str(calling), mode], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  return proc, calling


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.monotonic() < deadline, f"{path} did not appear"
    time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> list[str]:
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  return out.splitlines()


def _builds(tmp: Path) -> int:
  path = tmp / "builds.txt"
  return len(path.read_text().splitlines()) if path.exists() else 0


def _digest(root: Path) -> dict[str, tuple[str, int]]:
  """Relative path → (SHA-256 of the content, mtime) of every file under ``root``."""
  return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                     p.stat().st_mtime_ns)
          for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(root: Path) -> list[str]:
  return sorted(p.name for p in root.iterdir() if ".tmp-" in p.name)


def test_entry_path_is_keyed_by_the_parameters(tmp_path, monkeypatch):
  params = {"version": 1, "seed": 0, "n": 20}
  path = cache.entry_path(tmp_path, "toy", params, "s0-20")
  assert path.parent == tmp_path
  assert path.name == f"toy-s0-20-{cache.params_hash(params)}"
  assert len(cache.params_hash(params)) == 8
  assert cache.entry_path(tmp_path, "toy", dict(reversed(params.items())), "s0-20") == path
  for changed in ({"version": 2}, {"seed": 1}, {"n": 21}):
    assert cache.entry_path(tmp_path, "toy", {**params, **changed}, "s0-20") != path
  assert cache.entry_path(tmp_path, "toy", params).name == f"toy-{cache.params_hash(params)}"
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert cache.default_root() == tmp_path / "xdg" / "wmtp_jax"
  assert cache.entry_path("", "toy", params).parent == tmp_path / "xdg" / "wmtp_jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cache.default_root(None) == tmp_path / "home" / ".cache" / "wmtp_jax"


def test_built_once_then_reused_unmodified(tmp_path):
  calls = []

  def build(directory: Path) -> None:
    calls.append(directory)
    assert directory.is_dir() and not list(directory.iterdir())
    assert directory.parent == tmp_path and directory.name.startswith(".toy-t-")
    (directory / "data.txt").write_text("content")

  params = {"seed": 0, "sizes": (1, 2)}
  path = cache.cached_dir(tmp_path, "toy", params, build, label="t")
  assert path == cache.entry_path(tmp_path, "toy", params, "t") and len(calls) == 1
  assert (path / "data.txt").read_text() == "content"
  assert json.loads((path / cache.MARKER_FILE).read_text()) == {
      "kind": "toy", "params": {"seed": 0, "sizes": [1, 2]}}
  assert (tmp_path / f"{path.name}.lock").is_file() and _leftovers(tmp_path) == []
  before = _digest(path)
  assert cache.cached_dir(tmp_path, "toy", params, build, label="t") == path
  assert len(calls) == 1 and _digest(path) == before


def test_a_foreign_directory_under_the_name_is_not_touched(tmp_path):
  params = {"seed": 0}
  path = cache.entry_path(tmp_path, "toy", params, "t")
  path.mkdir()
  (path / "mine.txt").write_text("not a cache entry")
  with pytest.raises(RuntimeError, match="cache.json is missing or unreadable"):
    cache.cached_dir(tmp_path, "toy", params, lambda d: None, label="t")
  assert [p.name for p in path.iterdir()] == ["mine.txt"]
  (path / cache.MARKER_FILE).write_text(json.dumps({"kind": "toy", "params": {"seed": 1}}))
  with pytest.raises(RuntimeError, match=r"cache.json records other parameters \(params.seed\)"):
    cache.cached_dir(tmp_path, "toy", params, lambda d: None, label="t")


def test_an_exception_in_the_build_leaves_nothing(tmp_path):
  def failing(directory: Path) -> None:
    (directory / "half.txt").write_text("half")
    raise KeyboardInterrupt  # an interrupt as well as an error

  params = {"seed": 0}
  with pytest.raises(KeyboardInterrupt):
    cache.cached_dir(tmp_path, "toy", params, failing, label="t")
  path = cache.entry_path(tmp_path, "toy", params, "t")
  assert not path.exists() and _leftovers(tmp_path) == []
  cache.cached_dir(tmp_path, "toy", params, lambda d: (d / "data.txt").write_text("x"), label="t")
  assert (path / "data.txt").read_text() == "x"


def test_a_killed_build_leaves_only_a_temporary_directory_removed_by_the_next(tmp_path):
  root, params = tmp_path / "cache", {"seed": 0, "n": 20}
  proc, _ = _start(root, params, tmp_path, "killed", mode="kill")
  proc.communicate(timeout=120)
  assert proc.returncode == -9
  path = cache.entry_path(root, "toy", params, "t")
  assert not path.exists()
  (leftover,) = _leftovers(root)
  assert leftover.startswith(f".{path.name}.tmp-")
  assert [p.name for p in (root / leftover).iterdir()] == ["first.txt"]
  # The kill released the lock; the next build removes the leftover and completes.
  proc, _ = _start(root, params, tmp_path, "next")
  assert _finish(proc) == [str(path), json.dumps(params)]
  assert _builds(tmp_path) == 2 and _leftovers(root) == []
  assert sorted(p.name for p in path.iterdir()) == [cache.MARKER_FILE, "first.txt", "second.txt"]


def test_two_processes_with_the_same_parameters_build_once(tmp_path):
  """The second process asks while the first is building: it waits for the lock, finds the
  entry complete and reuses it."""
  root, params, release = tmp_path / "cache", {"seed": 0, "n": 20}, tmp_path / "release"
  first, _ = _start(root, params, tmp_path, "first", release=str(release))
  _wait_for(tmp_path / "builds.txt", first)  # the first one builds, holding the lock
  second, calling = _start(root, params, tmp_path, "second")
  _wait_for(calling, second)
  time.sleep(0.5)  # the second one is waiting for the lock
  path = cache.entry_path(root, "toy", params, "t")
  assert second.poll() is None and not path.exists()
  release.touch()
  assert _finish(first) == _finish(second) == [str(path), json.dumps(params)]
  assert _builds(tmp_path) == 1
  assert _leftovers(root) == [] and (root / f"{path.name}.lock").is_file()


def test_different_parameters_never_share_a_directory(tmp_path):
  """A build of other parameters, concurrent with a complete entry's readers, leaves it as it
  was; each entry is built once."""
  root, release = tmp_path / "cache", tmp_path / "release"
  a, b = {"seed": 0, "n": 20}, {"seed": 0, "n": 200}
  proc, _ = _start(root, a, tmp_path, "a")
  path_a = Path(_finish(proc)[0])
  before = _digest(path_a)
  first, _ = _start(root, b, tmp_path, "b1", release=str(release))
  second, _ = _start(root, a, tmp_path, "a2")
  assert _finish(second) == [str(path_a), json.dumps(a)]  # reused while b is being built
  release.touch()
  path_b = Path(_finish(first)[0])
  assert path_b != path_a and path_b.parent == path_a.parent == root
  assert _builds(tmp_path) == 2 and _digest(path_a) == before
  assert (path_b / "second.txt").read_text() == json.dumps(b)
