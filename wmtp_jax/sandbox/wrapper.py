"""Sandboxed execution of untrusted Python programs (generated code during evaluation).

``run_python(code)`` runs one program, ``run_many(programs)`` runs many on a thread pool (each
program is its own process tree, so threads only wait). Linux only.

How a program runs (DESIGN.md §6). The parent starts a small trusted *wrapper* (this file run as a
script, ``python -I -S``) in a new session, with a scrubbed environment (``PATH``, ``LANG``,
``HOME`` = ``TMPDIR`` = the working directory, ``PYTHONDONTWRITEBYTECODE``; nothing inherited)
and with stdin/stdout/stderr connected to anonymous files. The wrapper

1. becomes a *child subreaper* (orphaned descendants are re-parented to it, so none can leave
   its process tree by double-forking or ``setsid``) and dies with the parent (``PDEATHSIG``);
2. enters new mount, PID, network and IPC namespaces (``unshare``; when not root, inside a new
   user namespace that maps only the caller's own uid and gid), makes every mount read-only
   (``mount_setattr(AT_RECURSIVE)``), and mounts fresh, empty, size-limited tmpfs
   (``TMPFS_MB``) on the working directory and on ``/dev/shm``: the only writable places.
   ``MASKED_DIRS`` (``/home``, ``/root``, ``/run``, ``/tmp``, ``/var/tmp``) are replaced by
   empty read-only directories in which only the working directory and the interpreter's
   directories stay visible: this hides the caller's files, other runs' files and Unix sockets
   (D-Bus, X11, ssh-agent; abstract sockets belong to the network namespace). When root, the
   same masking makes an interpreter installed in a private directory (e.g. ``/root/.pyenv``)
   reachable for the unprivileged uid;
3. forks a *supervisor*, PID 1 of the new PID namespace, which mounts a ``/proc`` showing only the
   sandbox's processes, forks the program's process and reaps orphans. The program's process
   sets rlimits (CPU time ≈ timeout, address space = ``memory_mb``, file size
   ``FILE_SIZE_LIMIT``, open files, processes ``PROCESS_LIMIT``, no core dumps), switches to an
   unprivileged uid when started as root (``SANDBOX_UID_BASE`` + the wrapper's pid: a fresh uid
   per run, so ``RLIMIT_NPROC`` counts only this sandbox and concurrent sandboxes cannot touch
   each other), sets ``NO_NEW_PRIVS`` and execs ``python -I -B`` on the program (the standard
   library and the interpreter's site-packages are importable; the source is read from an
   inherited memfd, so the working directory starts empty);
4. when the program's process exits, the supervisor reports its wait status on a pipe the
   program cannot write to and exits; the kernel then kills everything left in the PID
   namespace, and the wrapper kills any other leftover descendant.

The parent enforces the wall-clock timeout: it SIGKILLs every descendant of the wrapper
(rescanning ``/proc`` until none is left; killing the supervisor kills the whole namespace), then
the wrapper. Output is bounded twice: files cannot grow past ``FILE_SIZE_LIMIT`` (the program
gets ``EFBIG``/``SIGXFSZ``; that counts as a failure, ``limit_hit="output"``), and only the first
``max_output_bytes`` of each stream are decoded into the result.

Containment of the hostile cases tested in ``tests/test_sandbox.py`` (infinite loops that swallow
every exception and signal, fork bombs, memory bombs, 1 GB of output, writes and deletions
outside the working directory, killing the parent or its process group, daemonised
grandchildren, ``ctypes``, network connections) relies on these OS mechanisms, never on Python
code running inside the sandbox: the program may use ``ctypes``, ``os.system``, signal handlers
or ``exec`` freely.

The mechanisms in effect are reported per run in ``RunResult.isolation``: ``uid`` (separate
unprivileged uid; root only), ``userns``, ``pidns``, ``netns``, ``ipcns``, ``mountns``,
``readonly_fs``, ``tmpfs_workdir``, ``masked_dirs``, ``private_proc``, ``nproc``.

What degrades without privileges:

* Not root, user namespaces available (most Linux distributions, HPC/cluster nodes): the same
  protection, except that the program keeps the caller's uid (mapped into its user namespace):
  it still cannot see or signal the caller (PID namespace) nor write outside its tmpfs
  (read-only mounts), but it can read every file of the caller outside ``MASKED_DIRS``.
* Root without ``CAP_SYS_ADMIN`` (e.g. a default Docker container): no namespaces, hence no
  network isolation (TCP/UDP, Unix sockets the new uid may open), no read-only mounts or masks
  (world-writable directories such as ``/tmp`` stay writable and files left there survive), no
  private ``/proc``; the uid switch, rlimits and process-tree killing still hold. The
  interpreter must be executable by other users (else ``SandboxError``).
* Neither (not root, no user namespaces): rlimits (without the process count, which would count
  all the caller's processes), the scrubbed environment, the fresh working directory and
  process-tree killing only, and the program, running as the caller, can kill the wrapper and
  thereby escape the killing. It can signal the caller, write the caller's files, use the network
  and exhaust processes. Treat this mode as unsafe.

What it does NOT protect against, even with every mechanism in effect:

* kernel exploits and container escapes (no seccomp filter, no LSM profile, no VM boundary);
* CPU, cache and memory side channels, and timing of other tenants;
* reading world-readable files outside ``MASKED_DIRS`` (``/etc``, ``/usr``, the project
  sources, datasets, model weights), and when not root the caller's files there; connecting to
  Unix sockets outside them (e.g. ``/dev/log``) when their permissions allow it;
* machine-wide resource exhaustion: memory is limited per process (``RLIMIT_AS``), not per
  sandbox (up to ``PROCESS_LIMIT`` × ``memory_mb``, plus the tmpfs), there is no cgroup, no
  disk-bandwidth or I/O limit, CPU time is limited per process, and concurrent runs share the
  machine;
* dishonest success: the result reports what the program did; a program that exits 0 before its
  asserts run (``os._exit(0)``) or rewrites the checking code "passes";
* uid collisions: the per-run uid assumes ``[SANDBOX_UID_BASE, SANDBOX_UID_BASE + pid_max)`` is
  unused and mapped (true on a normal host or a rootful container; a rootless container that
  maps only 65536 uids makes every run fail with ``SandboxError``).
"""

import contextlib
import ctypes
import dataclasses
import json
import math
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn

# The parent-only modules subprocess, tempfile, select and concurrent.futures are imported in the
# functions that use them: the wrapper runs this file as a script once per program, and importing
# them would double its start-up time.

FILE_SIZE_LIMIT = 16 * 2**20  # RLIMIT_FSIZE: largest file (and stdout/stderr) a program can write
PROCESS_LIMIT = 64  # RLIMIT_NPROC: processes + threads of one sandbox (when isolated)
OPEN_FILES_LIMIT = 128  # RLIMIT_NOFILE
TMPFS_MB = 64  # size of each private tmpfs (the working directory, /dev/shm)
SANDBOX_UID_BASE = 0x7F000000  # root: the program runs as uid = SANDBOX_UID_BASE + wrapper pid
# Replaced by empty read-only directories (keeping the working directory and the interpreter):
# the caller's files, other runs' temporary files, and Unix sockets (D-Bus, X11, ssh-agent).
MASKED_DIRS = ("/home", "/root", "/run", "/tmp", "/var/tmp")
_KILL_ROUNDS = 500  # rescans of /proc while killing a process tree (2 ms apart)
_SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

# Linux ABI constants (uapi headers; identical on x86-64 and arm64).
_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38
_SYS_MOUNT_SETATTR = 442
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1


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
    isolation: the mechanisms that were in effect (see the module docstring).
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
  import tempfile  # pylint: disable=import-outside-toplevel
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
  from concurrent import futures  # pylint: disable=import-outside-toplevel
  items = [p if isinstance(p, Program) else Program(p) for p in programs]

  def run(item: Program) -> RunResult:
    return run_python(item.code, stdin=item.stdin, timeout_s=timeout_s, memory_mb=memory_mb,
                      max_output_bytes=max_output_bytes)

  with futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
    return list(pool.map(run, items))


# ---------------------------------------------------------------------------------------------
# Parent side.


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
  import subprocess  # pylint: disable=import-outside-toplevel
  try:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(spec)],
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
  import select  # pylint: disable=import-outside-toplevel
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
    _kill_processes(lambda table: _descendants(proc.pid, table))
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
  hit_cap = size >= FILE_SIZE_LIMIT
  if size > max_bytes:
    total = f"the {FILE_SIZE_LIMIT}-byte limit" if hit_cap else f"{size} bytes"
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


# ---------------------------------------------------------------------------------------------
# Process table (shared by the parent and the wrapper).


def _processes() -> dict[int, tuple[int, str]]:
  """{pid: (ppid, state)} of every process visible in ``/proc``."""
  table = {}
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    except OSError:  # exited meanwhile
      continue
    table[int(name)] = (int(fields[1]), fields[0].decode())
  return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
  """Live (non-zombie) descendants of ``root`` in ``table``."""
  children: dict[int, list[int]] = {}
  for pid, (ppid, _) in table.items():
    children.setdefault(ppid, []).append(pid)
  found, stack = set(), [root]
  while stack:
    for child in children.get(stack.pop(), ()):
      if child not in found:
        found.add(child)
        stack.append(child)
  return {pid for pid in found if table[pid][1] not in "ZX"}


def _kill_processes(select_pids: Callable[[dict], set[int]]) -> None:
  """SIGKILLs ``select_pids(table)``, rescanning until it selects nothing (bounded)."""
  for _ in range(_KILL_ROUNDS):
    pids = select_pids(_processes())
    if not pids:
      return
    for pid in pids:
      with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.002)


# ---------------------------------------------------------------------------------------------
# Wrapper side (runs as ``python -I -S sandbox.py SPEC``; standard library only).


def _libc() -> ctypes.CDLL:
  return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
  """Raises ``OSError`` with errno when a libc call returned -1."""
  if ret == -1:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _prctl(option: int, value: int) -> None:
  _check(_libc().prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl({option})")


def _unshare(flags: int) -> None:
  _check(_libc().unshare(flags), "unshare")


def _cstr(text: str | None) -> bytes | None:
  return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
  _check(_libc().mount(_cstr(source), _cstr(target), _cstr(fstype), ctypes.c_ulong(flags),
                       _cstr(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)


def _enter_namespaces() -> list[str]:
  """New mount/PID/net/IPC namespaces (plus a user namespace when not root); [] if impossible."""
  flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC
  names = ["mountns", "pidns", "netns", "ipcns"]
  uid, gid = os.getuid(), os.getgid()
  try:
    if uid == 0:
      _unshare(flags)
      return names
    _unshare(flags | _CLONE_NEWUSER)
  except OSError:
    return []
  _write("/proc/self/setgroups", "deny")
  _write("/proc/self/uid_map", f"{uid} {uid} 1")
  _write("/proc/self/gid_map", f"{gid} {gid} 1")
  return ["userns"] + names


def _make_readonly() -> bool:
  """Makes every mount of this mount namespace read-only; False if the kernel cannot (< 5.12)."""
  attr = (ctypes.c_uint64 * 4)(_MOUNT_ATTR_RDONLY, 0, 0, 0)
  return _libc().syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE,
                         ctypes.byref(attr), ctypes.sizeof(attr)) == 0


def _within(path: str, directory: str) -> bool:
  return path == directory or path.startswith(directory + os.sep)


def _outermost(paths: list[str]) -> list[str]:
  """``paths`` without those inside another one."""
  return sorted({p for p in paths if not any(_within(p, q) for q in paths if q != p)})


def _needed_dirs(workdir: str) -> list[str]:
  """What the program needs to see: its working directory, the interpreter's prefixes and binary.

  The wrapper runs with ``-S``, so ``sys.prefix`` is the base installation even when the caller
  runs in a virtualenv; the virtualenv's root (its ``pyvenv.cfg`` and ``bin/``, e.g. under the
  masked ``/tmp``) is kept from ``sys.executable`` itself.
  """
  executable = os.path.abspath(sys.executable)
  env_root = os.path.dirname(os.path.dirname(executable))
  binary_dir = os.path.dirname(os.path.realpath(executable))
  return _outermost([os.path.realpath(p)
                     for p in (workdir, sys.base_prefix, sys.prefix, env_root, binary_dir)])


def _hidden_ancestor(path: str) -> str | None:
  """The outermost directory on ``path`` that other users cannot traverse (e.g. ``/root``)."""
  parts = path.split(os.sep)
  for i in range(2, len(parts) + 1):
    prefix = os.sep.join(parts[:i])
    if not os.stat(prefix).st_mode & stat.S_IXOTH:
      return prefix
  return None


def _mask(directory: str, keep: list[str]) -> None:
  """Hides ``directory`` under an empty read-only tmpfs in which only ``keep`` stay visible."""
  fds = [os.open(path, os.O_PATH) for path in keep]
  _mount("tmpfs", directory, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m")
  for path, fd in zip(keep, fds):
    os.makedirs(path, exist_ok=True)
    _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
    os.close(fd)
  _mount(None, directory, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _hide_private_dirs(workdir: str, switch_uid: bool) -> None:
  """Masks ``MASKED_DIRS`` (and, for a uid switch, directories the new uid cannot traverse on
  the way to the interpreter), keeping only what the program needs visible."""
  needed = _needed_dirs(workdir)
  masks = [d for d in MASKED_DIRS if os.path.isdir(d) and not os.path.islink(d)]
  if switch_uid:
    masks += [a for a in map(_hidden_ancestor, needed) if a is not None]
  for mask in _outermost(masks):
    if not any(_within(mask, path) for path in needed):
      _mask(mask, [path for path in needed if _within(path, mask)])


def _setup_mounts(workdir: str, isolation: list[str], switch_uid: bool) -> None:
  """Read-only mounts, private tmpfs, masks; appends to ``isolation`` as each step succeeds."""
  _mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing propagates back to the host
  if _make_readonly():
    isolation.append("readonly_fs")
  _mount("tmpfs", workdir, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={TMPFS_MB}m,mode=0700")
  isolation.append("tmpfs_workdir")
  if os.path.isdir("/dev/shm"):  # POSIX semaphores and shared memory (multiprocessing)
    _mount("tmpfs", "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={TMPFS_MB}m,mode=1777")
  _hide_private_dirs(workdir, switch_uid)
  isolation.append("masked_dirs")


def _isolate(workdir: str) -> list[str]:
  """Sets up the wrapper's namespaces and mounts; returns the mechanisms in effect."""
  isolation = _enter_namespaces()
  if not isolation:
    return isolation
  root = os.getuid() == 0
  try:
    _setup_mounts(workdir, isolation, switch_uid=root)
  except OSError:
    if root:
      raise
    # An unprivileged user namespace may refuse mounts (e.g. AppArmor): keep what succeeded.
  return isolation


def _mount_private_proc() -> bool:
  """Mounts a ``/proc`` of the new PID namespace (in a mount namespace of the program's own)."""
  try:
    _unshare(_CLONE_NEWNS)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
  except OSError:
    return False
  return True


def _set_limits(spec: dict, limit_processes: bool) -> None:
  """rlimits of the program (inherited by everything it starts)."""
  cpu_s = math.ceil(spec["timeout_s"]) + 1
  memory = spec["memory_mb"] * 2**20
  limits = {resource.RLIMIT_CPU: (cpu_s, cpu_s + 1), resource.RLIMIT_AS: (memory, memory),
            resource.RLIMIT_FSIZE: (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT),
            resource.RLIMIT_NOFILE: (OPEN_FILES_LIMIT, OPEN_FILES_LIMIT),
            resource.RLIMIT_CORE: (0, 0)}
  if limit_processes:
    limits[resource.RLIMIT_NPROC] = (PROCESS_LIMIT, PROCESS_LIMIT)
  for kind, value in limits.items():
    resource.setrlimit(kind, value)


def _drop_privileges(uid: int, workdir: str) -> None:
  """Root only: hands ``workdir`` to ``uid`` and becomes ``uid`` (no groups, no capabilities)."""
  os.chown(workdir, uid, uid)
  os.setgroups([])
  os.setresgid(uid, uid, uid)
  os.setresuid(uid, uid, uid)


def _report(status_fd: int, **fields) -> None:
  os.write(status_fd, (json.dumps(fields) + "\n").encode())


def _exec_program(spec: dict, isolation: list[str], uid: int | None) -> NoReturn:
  """The program's process: rlimits, unprivileged uid, then exec of the interpreter.

  ``uid`` is the unprivileged uid to switch to (root only), else ``None``.
  """
  status_fd = spec["status_fd"]
  try:
    os.chdir(spec["workdir"])
    limit_processes = uid is not None or "userns" in isolation
    _set_limits(spec, limit_processes)
    if uid is not None:
      _drop_privileges(uid, spec["workdir"])
      isolation.append("uid")
    if limit_processes:
      isolation.append("nproc")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.umask(0o077)
    os.set_inheritable(status_fd, False)
    _report(status_fd, isolation=isolation)
    source = f"/proc/self/fd/{spec['program_fd']}"
    os.execv(sys.executable, [sys.executable, "-I", "-B", source])
  except BaseException as e:  # pylint: disable=broad-except
    _report(status_fd, error=f"sandbox: cannot start the program: {e!r}")
    os._exit(127)


def _supervise(spec: dict, isolation: list[str], uid: int | None) -> NoReturn:
  """PID 1 of the new PID namespace: starts the program, reaps orphans, reports its status.

  The program must not be PID 1 itself: PID 1 ignores its own default-action signals
  (``os.kill(os.getpid(), SIGTERM)``, ``signal.alarm``, ``abort``).
  """
  try:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the namespace dies with the wrapper
    if "pidns" in isolation and _mount_private_proc():
      isolation.append("private_proc")
    program = os.fork()
  except OSError as e:
    _report(spec["status_fd"], error=f"sandbox: cannot start the supervisor: {e!r}")
    os._exit(1)
  if program == 0:
    _exec_program(spec, isolation, uid)
  while True:
    pid, wait_status = os.waitpid(-1, 0)
    if pid == program:
      _report(spec["status_fd"], wait_status=wait_status)
      os._exit(0)  # the kernel now kills whatever is left in the namespace


def _wrapper_main(spec: dict) -> NoReturn:
  """The trusted wrapper: isolate, fork the supervisor, wait, kill leftovers, exit."""
  resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
  _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  _prctl(_PR_SET_CHILD_SUBREAPER, 1)
  try:
    isolation = _isolate(spec["workdir"])
  except OSError as e:
    _report(spec["status_fd"], error=f"sandbox: isolation failed: {e!r}")
    os._exit(1)
  uid = SANDBOX_UID_BASE + os.getpid() if os.getuid() == 0 else None
  supervisor = os.fork()
  if supervisor == 0:
    _supervise(spec, isolation, uid)
  os.waitpid(supervisor, 0)
  # Without a PID namespace, orphans were re-parented to this subreaper: kill and reap them.
  _kill_processes(lambda table: _descendants(os.getpid(), table))
  with contextlib.suppress(ChildProcessError):
    while True:
      os.waitpid(-1, 0)
  os._exit(0)


if __name__ == "__main__":
  _wrapper_main(json.loads(sys.argv[1]))
