"""Sandboxed execution of untrusted Python programs (generated code during evaluation).

``run_python(code)`` runs one program, ``run_many(programs)`` runs many on a thread pool (each
program is its own process tree, so threads only wait). Linux only. Modules: ``runner`` (the
parent side: ``run_python``, ``run_many``, results, timeouts) and ``wrapper`` (the trusted child
side, standard library only: namespaces, mounts, rlimits, privilege drop, supervisor,
process-tree killing).

How a program runs (DESIGN.md §6). The parent (``runner``) starts a small trusted *wrapper*
(``wrapper.py`` run as a script, ``python -I -S``) in a new session, with a scrubbed environment
(``PATH``, ``LANG``, ``HOME`` = ``TMPDIR`` = the working directory, ``PYTHONDONTWRITEBYTECODE``;
nothing inherited) and with stdin/stdout/stderr connected to anonymous files. The wrapper

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

from wmtp_jax.sandbox.runner import Program, RunResult, SandboxError, run_many, run_python
from wmtp_jax.sandbox.wrapper import (FILE_SIZE_LIMIT, MASKED_DIRS, OPEN_FILES_LIMIT,
                                      PROCESS_LIMIT, SANDBOX_UID_BASE, TMPFS_MB)
