"""The trusted wrapper of ``wmtp_jax.sandbox``: what runs on the child side of a sandboxed run.

The parent (``runner``) starts this file as a script, ``python -I -S -B wrapper.py SPEC``, with
``SPEC`` a JSON object (``workdir``, ``program_fd``, ``status_fd``, ``timeout_s``, ``memory_mb``).
It sets up the namespaces, mounts and masks, forks the supervisor (PID 1 of the new PID
namespace), which sets the rlimits, drops privileges and execs the program, and kills the
leftover process tree; the security model is in the package docstring (``wmtp_jax.sandbox``).
In ``-I -S`` mode it cannot import ``wmtp_jax``: standard library only, self-contained. The parent
imports it for the limits and the process-tree killing (``descendants``, ``kill_processes``).
"""

import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable
from typing import NoReturn

FILE_SIZE_LIMIT = 16 * 2**20  # RLIMIT_FSIZE: largest file (and stdout/stderr) a program can write
PROCESS_LIMIT = 64  # RLIMIT_NPROC: processes + threads of one sandbox (when isolated)
OPEN_FILES_LIMIT = 128  # RLIMIT_NOFILE
TMPFS_MB = 64  # size of each private tmpfs (the working directory, /dev/shm)
SANDBOX_UID_BASE = 0x7F000000  # root: the program runs as uid = SANDBOX_UID_BASE + wrapper pid
# Replaced by empty read-only directories (keeping the working directory and the interpreter):
# the caller's files, other runs' temporary files, and Unix sockets (D-Bus, X11, ssh-agent).
MASKED_DIRS = ("/home", "/root", "/run", "/tmp", "/var/tmp")
_KILL_ROUNDS = 500  # rescans of /proc while killing a process tree (2 ms apart)

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


def descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
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


def kill_processes(select_pids: Callable[[dict], set[int]]) -> None:
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
# Wrapper side.


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
  kill_processes(lambda table: descendants(os.getpid(), table))
  with contextlib.suppress(ChildProcessError):
    while True:
      os.waitpid(-1, 0)
  os._exit(0)


if __name__ == "__main__":
  _wrapper_main(json.loads(sys.argv[1]))
