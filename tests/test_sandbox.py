"""Tests of wmtp_jax.sandbox: normal programs, and containment of hostile ones.

Every hostile test checks both that the call returns within a bounded time and that nothing
outside the sandbox changed (files, processes, the caller, the network). Programs that attack
their caller run under a helper subprocess in its own session, so a containment failure kills the
helper (and fails the test) instead of pytest.
"""

import json
import os
import pathlib
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid

import pytest

from wmtp_jax import sandbox

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]
SLACK_S = 2.5  # allowed time beyond the timeout (process start-up and teardown, loaded CI)

# Runs a program in the sandbox from a separate process; HELPER_PID / HELPER_PGID in the program
# are replaced by the helper's pid and process group; prints the RunResult as JSON.
HELPER = textwrap.dedent("""
    import dataclasses, json, os, sys
    from wmtp_jax import sandbox
    code = sys.stdin.read()
    code = code.replace("HELPER_PID", str(os.getpid())).replace("HELPER_PGID", str(os.getpgrp()))
    result = sandbox.run_python(code, timeout_s=float(sys.argv[1]))
    print(json.dumps(dataclasses.asdict(result)))
""")


def unique_marker() -> str:
  """A process name (≤ 15 bytes) unlikely to exist anywhere else."""
  return "wsb" + uuid.uuid4().hex[:10]


def named(marker: str, code: str) -> str:
  """``code`` preceded by renaming the process to ``marker`` (inherited by forks)."""
  return f"import ctypes\nctypes.CDLL(None).prctl(15, {marker.encode()!r})\n" + code


def processes_with(marker: str) -> list[int]:
  """Live processes whose name or command line contains ``marker``."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat", "rb") as f:
        state = f.read().rpartition(b")")[2].split()[0]
      name = pathlib.Path(f"/proc/{pid}/comm").read_bytes()
      cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
      continue
    if state != b"Z" and (marker.encode() in name or marker.encode() in cmdline):
      found.append(int(pid))
  return found


def run_in_helper(code: str, timeout_s: float, command_prefix=(sys.executable,)):
  """Runs ``code`` via HELPER in a new session; returns (helper returncode, RunResult | None)."""
  helper = subprocess.run([*command_prefix, "-c", HELPER, str(timeout_s)], input=code,
                          capture_output=True, text=True, cwd=PROJECT_ROOT,
                          start_new_session=True, timeout=timeout_s + 30, check=False)
  lines = helper.stdout.strip().splitlines()
  result = sandbox.RunResult(**json.loads(lines[-1])) if lines else None
  return helper.returncode, result


def probe_isolation() -> tuple[str, ...]:
  return sandbox.run_python("pass").isolation


def assert_bounded(result: sandbox.RunResult, timeout_s: float):
  assert result.duration_s < timeout_s + SLACK_S, result


# --- Normal programs ---------------------------------------------------------------------------


def test_stdout_and_stdin():
  result = sandbox.run_python("import math\nname = input()\nprint(f'hi {name}', math.factorial(5))",
                              stdin="ada\n")
  assert result.passed and result.returncode == 0 and not result.timed_out
  assert result.stdout == "hi ada 120\n" and result.stderr == ""
  assert result.limit_hit is None and result.signal is None


@pytest.mark.parametrize("code, returncode", [
    ("assert 1 + 1 == 3", 1),
    ("import sys\nsys.exit(3)", 3),
    ("raise SystemExit(0)", 0),
    ("exit(0)", 0),  # site's exit() exists: programs often call it
])
def test_exit_codes(code, returncode):
  result = sandbox.run_python(code)
  assert result.returncode == returncode
  assert result.passed == (returncode == 0)


def test_killed_by_signal():
  result = sandbox.run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
  assert not result.passed
  assert result.returncode == -signal.SIGSEGV and result.signal == signal.SIGSEGV


def test_fresh_empty_working_directory_and_scrubbed_environment(monkeypatch):
  monkeypatch.setenv("WMTP_SECRET_TOKEN", "hunter2")
  monkeypatch.setenv("PYTHONPATH", "/somewhere")
  code = textwrap.dedent("""
      import json, os
      print(json.dumps({"cwd": os.getcwd(), "files": os.listdir("."), "env": dict(os.environ)}))
      open("left_behind.txt", "w").write("x")
  """)
  first = json.loads(sandbox.run_python(code).stdout)
  second = json.loads(sandbox.run_python(code).stdout)
  assert first["files"] == [] and second["files"] == []
  assert first["cwd"] != second["cwd"] and not os.path.exists(first["cwd"])
  assert first["cwd"] != os.getcwd()
  env = first["env"]
  assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE"}
  assert env["HOME"] == first["cwd"] and "hunter2" not in json.dumps(env)


def test_run_many_keeps_input_order_and_per_program_stdin():
  programs = [f"import time\ntime.sleep({0.3 - 0.1 * i})\nprint({i})" for i in range(3)]
  programs.append(sandbox.Program("print(input()[::-1])", stdin="abc\n"))
  programs.append("raise ValueError")
  results = sandbox.run_many(programs, workers=3, timeout_s=5.0)
  assert [r.stdout for r in results[:4]] == ["0\n", "1\n", "2\n", "cba\n"]
  assert [r.passed for r in results] == [True] * 4 + [False]


def test_large_output_is_truncated_with_marker():
  result = sandbox.run_python("print('x' * 100_000)", max_output_bytes=1000)
  assert result.passed and result.limit_hit is None
  assert result.stdout.startswith("x" * 1000)
  assert "output truncated to 1000 bytes of 100001 bytes" in result.stdout
  assert len(result.stdout) < 1200


def test_isolation_mechanisms_in_effect():
  isolation = set(probe_isolation())
  if os.geteuid() == 0:
    expected = {"uid", "nproc", "pidns", "netns", "mountns", "readonly_fs", "tmpfs_workdir",
                "masked_dirs", "private_proc"}
    if not {"pidns"} <= isolation:  # root without CAP_SYS_ADMIN: uid switch only
      expected = {"uid", "nproc"}
    assert expected <= isolation
  else:
    assert not isolation or {"userns", "pidns", "netns", "nproc"} <= isolation


# --- Hostile programs --------------------------------------------------------------------------


def test_infinite_loop_that_swallows_exceptions_and_signals():
  marker = unique_marker()
  code = named(marker, textwrap.dedent("""
      import signal
      for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGXCPU, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
      while True:
        try:
          while True:
            pass
        except BaseException:
          pass
  """))
  result = sandbox.run_python(code, timeout_s=1.0)
  assert result.timed_out and result.limit_hit == "timeout" and not result.passed
  assert result.returncode is None
  assert_bounded(result, 1.0)
  assert processes_with(marker) == []


def test_fork_bomb():
  marker = unique_marker()
  code = named(marker, textwrap.dedent("""
      import os
      while True:
        try:
          os.fork()
        except BaseException:
          pass
  """))
  result = sandbox.run_python(code, timeout_s=2.0)
  assert not result.passed
  assert_bounded(result, 2.0)
  assert processes_with(marker) == []


def test_memory_bomb():
  code = "chunks = []\nwhile True:\n  chunks.append(bytearray(50 * 2**20))"
  result = sandbox.run_python(code, timeout_s=10.0, memory_mb=512)
  assert not result.passed and not result.timed_out
  assert "MemoryError" in result.stderr
  assert result.duration_s < 5.0


def test_huge_output():
  marker = unique_marker()
  code = named(marker, textwrap.dedent("""
      import sys
      chunk = "y" * 2**20
      for _ in range(1024):  # 1 GiB
        try:
          sys.stdout.write(chunk)
        except BaseException:
          pass
  """))
  result = sandbox.run_python(code, timeout_s=10.0)
  assert not result.passed and result.limit_hit == "output"
  assert len(result.stdout) < 65536 + 200
  assert "output truncated" in result.stdout
  assert result.duration_s < 10.0
  assert processes_with(marker) == []


def test_writes_outside_working_directory(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("original")
  targets = [victim, tmp_path / "created.txt", pathlib.Path.cwd() / f"escape-{uuid.uuid4().hex}",
             pathlib.Path("/tmp") / f"escape-{uuid.uuid4().hex}"]
  code = textwrap.dedent(f"""
      import os
      for path in {[str(t) for t in targets]!r}:
        try:
          with open(path, "w") as f:
            f.write("pwned")
          print("wrote", path)
        except OSError as e:
          print("blocked", path, e)
  """)
  result = sandbox.run_python(code, timeout_s=5.0)
  assert "wrote" not in result.stdout, result.stdout
  assert victim.read_text() == "original"
  assert not any(t.exists() for t in targets[1:])


def test_deleting_files_outside_working_directory(tmp_path):
  victim = tmp_path / "keep" / "victim.txt"
  victim.parent.mkdir()
  victim.write_text("original")
  code = textwrap.dedent(f"""
      import os, shutil
      for attempt in (lambda: os.remove({str(victim)!r}),
                      lambda: shutil.rmtree({str(victim.parent)!r}),
                      lambda: os.rename({str(victim)!r}, "stolen.txt")):
        try:
          attempt()
          print("deleted")
        except OSError as e:
          print("blocked", e)
  """)
  result = sandbox.run_python(code, timeout_s=5.0)
  assert "deleted" not in result.stdout, result.stdout
  assert victim.read_text() == "original"


def test_cannot_kill_parent_or_its_process_group():
  isolation = set(probe_isolation())
  kill_all = "os.kill(-1, signal.SIGKILL)" if isolation & {"pidns", "uid"} else "None"
  code = textwrap.dedent(f"""
      import os, signal
      for attack in (lambda: os.kill(os.getppid(), signal.SIGKILL),
                     lambda: os.kill(HELPER_PID, signal.SIGKILL),
                     lambda: os.killpg(HELPER_PGID, signal.SIGKILL),
                     lambda: os.killpg(0, signal.SIGKILL),
                     lambda: {kill_all}):
        try:
          attack()
        except OSError:
          pass
      print("done")
  """)
  returncode, result = run_in_helper(code, timeout_s=2.0)
  assert returncode == 0 and result is not None, "the sandbox's caller was killed"
  assert_bounded(result, 2.0)


def test_daemonised_grandchildren_are_killed():
  shell_marker, daemon_marker = (str(900000 + int(uuid.uuid4().int % 99999)) for _ in range(2))
  code = textwrap.dedent(f"""
      import os
      os.system("sleep {shell_marker} &")
      if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
          os.execv("/bin/sleep", ["sleep", "{daemon_marker}"])
        os._exit(0)
      os.wait()
      print("parent exits")
  """)
  result = sandbox.run_python(code, timeout_s=5.0)
  assert result.passed and result.stdout == "parent exits\n"
  assert result.duration_s < 5.0
  assert processes_with(f"sleep\0{shell_marker}") == []
  assert processes_with(f"sleep\0{daemon_marker}") == []


def test_ctypes_kill_and_fork():
  marker = unique_marker()
  code = named(marker, textwrap.dedent("""
      import ctypes, os
      libc = ctypes.CDLL(None)
      libc.kill(HELPER_PID, 9)
      libc.kill(-HELPER_PGID, 9)
      libc.syscall(62, HELPER_PID, 9)  # raw kill(2) on x86-64
      while True:
        libc.fork()
  """))
  returncode, result = run_in_helper(code, timeout_s=2.0)
  assert returncode == 0 and result is not None, "the sandbox's caller was killed"
  assert result.timed_out
  assert_bounded(result, 2.0)
  assert processes_with(marker) == []


def test_network_connections_are_blocked():
  socket_dir = pathlib.Path(tempfile.mkdtemp(prefix="wmtp-socket-"))  # reachable by every uid
  socket_dir.chmod(0o755)
  unix_path = str(socket_dir / "server.sock")
  abstract_name = f"\0wmtp-{uuid.uuid4().hex}"
  servers = [socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
             socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)]
  try:
    for server, address in zip(servers, [("127.0.0.1", 0), ("127.0.0.1", 0), unix_path,
                                         abstract_name]):
      server.bind(address)
      if server.type == socket.SOCK_STREAM:
        server.listen()
    os.chmod(unix_path, 0o777)
    tcp_port, udp_port = servers[0].getsockname()[1], servers[1].getsockname()[1]
    code = textwrap.dedent(f"""
        import socket
        attempts = {{
            "tcp": lambda: socket.create_connection(("127.0.0.1", {tcp_port}), timeout=1),
            "udp": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                b"leak", ("127.0.0.1", {udp_port})),
            "unix": lambda: socket.socket(socket.AF_UNIX).connect({unix_path!r}),
            "abstract": lambda: socket.socket(socket.AF_UNIX).connect({abstract_name!r}),
        }}
        for name, attempt in attempts.items():
          try:
            attempt()
            print(name, "reached")
          except OSError as e:
            print(name, "blocked", e)
    """)
    result = sandbox.run_python(code, timeout_s=5.0)
    assert result.stdout.count("blocked") == 4, result.stdout
    assert select.select(servers, [], [], 0.2)[0] == []
  finally:
    for server in servers:
      server.close()
    shutil.rmtree(socket_dir)


# Degraded modes, reproduced from root with a system Python that every uid can execute:
# (uid of the caller, command prefix, mechanisms that must be in effect).
DEGRADED_MODES = {
    "unprivileged_with_user_namespaces": (
        65534, ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        {"userns", "pidns", "netns", "mountns", "readonly_fs", "masked_dirs", "nproc"}),
    "root_without_cap_sys_admin": (
        0, ("setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"), {"uid", "nproc"}),
}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None
                    or not os.access("/usr/bin/python3", os.X_OK),
                    reason="needs root (to change credentials), setpriv and /usr/bin/python3")
@pytest.mark.parametrize("mode", DEGRADED_MODES)
def test_degraded_modes_still_protect_caller_files_and_processes(mode):
  owner, setpriv, expected = DEGRADED_MODES[mode]
  victim_dir = pathlib.Path(tempfile.mkdtemp(prefix="wmtp-victim-"))
  try:
    victim_dir.chmod(0o755)
    victim = victim_dir / "victim.txt"
    victim.write_text("original")
    os.chown(victim, owner, owner)  # writable by the caller, so only the sandbox can protect it
    daemon_marker = str(800000 + uuid.uuid4().int % 99999)
    code = textwrap.dedent(f"""
        import os, signal
        for attack in (lambda: os.kill(HELPER_PID, signal.SIGKILL),
                       lambda: open({str(victim)!r}, "w").write("pwned"),
                       lambda: os.remove({str(victim)!r})):
          try:
            attack()
          except OSError:
            pass
        if os.fork() == 0:
          os.setsid()
          if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "{daemon_marker}"])
          os._exit(0)
        os.wait()
        print("done")
    """)
    returncode, result = run_in_helper(code, timeout_s=3.0,
                                       command_prefix=(*setpriv, "/usr/bin/python3"))
    assert returncode == 0 and result is not None, "the sandbox's caller was killed"
    if mode.startswith("unprivileged") and not result.isolation:
      pytest.skip("unprivileged user namespaces are disabled on this machine")
    assert expected <= set(result.isolation), result.isolation
    assert result.passed and result.stdout == "done\n"
    assert victim.read_text() == "original"
    assert processes_with(f"sleep\0{daemon_marker}") == []
  finally:
    shutil.rmtree(victim_dir)


def test_caller_in_a_virtualenv_under_a_masked_directory(tmp_path):
  """A caller whose interpreter is a virtualenv under ``/tmp`` (masked inside the sandbox; CI
  creates its venv there) still runs programs: the venv root stays visible."""
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  root = str(pathlib.Path(__file__).resolve().parents[1])
  probe = (f"import sys; sys.path.insert(0, {root!r}); from wmtp_jax import sandbox; "
           f"r = sandbox.run_python('import sys; print(sys.prefix)'); print(r.passed, r.stdout)")
  out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", str(venv)]
