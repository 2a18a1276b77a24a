"""The parent side of ``wmtp_jax.sandbox``: ``run_python`` / ``run_many`` and their results.

Each run starts the trusted wrapper (``wrapper.py``, as a script) on a fresh working directory,
feeds it the program through a memfd, enforces the wall-clock timeout (killing the wrapper's whole
process tree), and assembles the ``RunResult`` from the status pipe and the output files. The
security model is in the package docstring (``wmtp_jax.sandbox``).
"""

import contextlib
import dataclasses
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent import futures

from wmtp_jax.sandbox import wrapper

_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxError(RuntimeError):
  """The sandbox itself could not be set up (never raised for anything the program does)."""


@dataclasses.dataclass(frozen=True)
class Program:
  """One program for ``run_many``: its source and optional stdin."""
  code: str
  stdin: str | None = None


@dataclasses.dataclass(frozen=True)
class RunResult:
  """Outcome of one sandboxed run.

  Attributes:
    passed: ``returncode == 0`` and no limit was hit (not timed out, output within
      ``FILE_SIZE_LIMIT``).
    returncode: exit code, ``-signal`` when killed by a signal, ``None`` when timed out.
    timed_out: the wall-clock timeout expired and the process tree was killed.
    stdout: decoded output (UTF-8, invalid bytes replaced), truncated to ``max_output_bytes``
      with a marker line saying so.
    stderr: same for the error stream.
    duration_s: wall-clock time from start to exit (or kill).
    signal: the signal that killed the program, if any (e.g. 9 SIGKILL, 24 SIGXCPU).
    limit_hit: ``"timeout"``, ``"output"`` (a file reached ``FILE_SIZE_LIMIT``), ``"cpu"``
      (SIGXCPU) or ``None``. A ``MemoryError`` is an ordinary failure (``returncode`` 1).
    isolation: the mechanisms that were in effect (see the package docstring).
  """
  passed: bool
  returncode: int | None
  timed_out: bool
  stdout: str
  stderr: str
  duration_s: float
  signal: int | None = None
  limit_hit: str | None = None
  isolation: tuple[str, ...] = ()


def run_python(code: str, *, stdin: str | None = None, timeout_s: float = 10.0,
               memory_mb: int = 1024, max_output_bytes: int = 65536) -> RunResult:
  """Runs ``code`` as ``__main__`` of a fresh sandboxed Python process.

  Args:
    code: program source.
    stdin: text fed to the program's stdin (``None``: ``/dev/null``).
    timeout_s: wall-clock limit; the whole process tree is killed when it expires.
    memory_mb: address-space limit of every process of the program.
    max_output_bytes: how much of stdout and of stderr is kept in the result.

  Returns:
    The ``RunResult``.

  Raises:
    SandboxError: the sandbox could not be set up (e.g. uid not mapped, interpreter missing).
  """
  with contextlib.ExitStack() as stack:
    workdir = os.path.realpath(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="wmtp-sandbox-")))
    program = stack.enter_context(_memfile("program", code))
    stdin_file = stack.enter_context(_memfile("stdin", stdin)) if stdin is not None else None
    out = stack.enter_context(tempfile.TemporaryFile())
    err = stack.enter_context(tempfile.TemporaryFile())
    status_r, status_w = os.pipe()
    stack.callback(os.close, status_r)
    spec = {"workdir": workdir, "program_fd": program.fileno(), "status_fd": status_w,
            "timeout_s": timeout_s, "memory_mb": memory_mb}
    start = time.monotonic()
    proc = _start_wrapper(spec, stdin_file, out, err)
    timed_out = _wait_then_kill(proc, timeout_s)
    duration_s = time.monotonic() - start
    status = _read_status(status_r)
    if "error" in status or (proc.returncode > 0 and not timed_out):  # > 0: wrapper crashed
      message = status.get("error", f"sandbox: the wrapper exited with {proc.returncode}")
      raise SandboxError(f"{message}\n{_read_output(err, max_output_bytes)[0]}")
    return _result(status, timed_out, duration_s, out, err, max_output_bytes)


def run_many(programs: Sequence[str | Program], *, workers: int | None = None,
             timeout_s: float = 10.0, memory_mb: int = 1024,
             max_output_bytes: int = 65536) -> list[RunResult]:
  """Runs every program with ``run_python`` on ``workers`` threads (default: CPU count).

  Returns the results in input order. A ``str`` is a program without stdin.
  """
  items = [p if isinstance(p, Program) else Program(p) for p in programs]

  def run(item: Program) -> RunResult:
    return run_python(item.code, stdin=item.stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                      max_output_bytes=max_output_bytes)

  with futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
    return list(pool.map(run, items))


@contextlib.contextmanager
def _memfile(name: str, text: str) -> Iterator:
  """An anonymous in-memory file holding ``text`` (UTF-8), positioned at its start."""
  with os.fdopen(os.memfd_create(name), "w+b") as f:
    f.write(text.encode())
    f.flush()
    f.seek(0)
    yield f


def _start_wrapper(spec: dict, stdin_file, out, err):
  """Starts the wrapper (``Popen``) in a new session; closes the parent's status write end."""
  try:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", os.path.abspath(wrapper.__file__), json.dumps(spec)],
        stdin=stdin_file or subprocess.DEVNULL, stdout=out, stderr=err,
        pass_fds=(spec["program_fd"], spec["status_fd"]), cwd=spec["workdir"],
        env=_sandbox_env(spec["workdir"]), start_new_session=True)
  finally:
    os.close(spec["status_fd"])


def _sandbox_env(workdir: str) -> dict[str, str]:
  """The complete environment of the wrapper and the program."""
  return {"PATH": _SANDBOX_PATH, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
          "PYTHONDONTWRITEBYTECODE": "1"}


def _wait_then_kill(proc, timeout_s: float) -> bool:
  """Waits for the wrapper (a ``Popen``) up to ``timeout_s``, then kills its whole tree.

  Returns whether the timeout expired.
  """
  timed_out = True
  try:
    pidfd = os.pidfd_open(proc.pid)  # readable once the wrapper exits (it is not reaped)
    try:
      poller = select.poll()  # not select.select: fds above 1023 are common in big processes
      poller.register(pidfd, select.POLLIN)
      timed_out = not poller.poll(math.ceil(timeout_s * 1000))
    finally:
      os.close(pidfd)
  finally:
    # The wrapper is alive or a zombie here, so its pid cannot have been reused.
    wrapper.kill_processes(lambda table: wrapper.descendants(proc.pid, table))
    proc.kill()
    proc.wait()
  return timed_out


def _read_status(fd: int) -> dict:
  """Merges the JSON lines the wrapper wrote on the status pipe (all writers are gone)."""
  os.set_blocking(fd, False)
  chunks = []
  with contextlib.suppress(BlockingIOError):
    while chunk := os.read(fd, 65536):
      chunks.append(chunk)
  status = {}
  for line in b"".join(chunks).decode().splitlines():
    status.update(json.loads(line))
  return status


def _read_output(f, max_bytes: int) -> tuple[str, bool]:
  """(first ``max_bytes`` of ``f`` decoded, with a truncation marker; whether the cap was hit)."""
  size = os.fstat(f.fileno()).st_size
  f.seek(0)
  text = f.read(max_bytes).decode(errors="replace")
  hit_cap = size >= wrapper.FILE_SIZE_LIMIT
  if size > max_bytes:
    total = f"the {wrapper.FILE_SIZE_LIMIT}-byte limit" if hit_cap else f"{size} bytes"
    text += f"\n[wmtp_jax.sandbox: output truncated to {max_bytes} bytes of {total}]\n"
  return text, hit_cap


def _result(status: dict, timed_out: bool, duration_s: float, out, err, max_bytes: int
            ) -> RunResult:
  """Assembles the ``RunResult`` of a finished (or killed) run from the wrapper's status."""
  stdout, out_capped = _read_output(out, max_bytes)
  stderr, err_capped = _read_output(err, max_bytes)
  wait_status = None if timed_out else status.get("wait_status")  # None: supervisor was killed
  code = None if wait_status is None else os.waitstatus_to_exitcode(wait_status)
  sig = -code if code is not None and code < 0 else None
  if timed_out:
    limit_hit = "timeout"
  elif out_capped or err_capped:
    limit_hit = "output"
  elif sig == signal.SIGXCPU:
    limit_hit = "cpu"
  else:
    limit_hit = None
  return RunResult(passed=code == 0 and limit_hit is None, returncode=code, timed_out=timed_out,
                   stdout=stdout, stderr=stderr, duration_s=duration_s, signal=sig,
                   limit_hit=limit_hit, isolation=tuple(status.get("isolation", ())))
