"""Start N training processes on 127.0.0.1, each with M CPU devices and gloo collectives: the
multi-host path (``jax.distributed``, per-process data shards, global arrays) on one machine.

    python launch/local.py --processes=2 --devices=2 -- --config=configs/baseline.py --workdir=/tmp/x

Arguments after ``--`` go to ``python -m wmtp_jax.main`` of every process, which gets
``--coordinator=127.0.0.1:PORT --num_processes=N --process_id=I``. When a process fails, the others
are terminated (SIGKILL after ``--grace`` seconds) and the launcher exits with the failed process's
code; it exits 0 when all processes finish.
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
  """SIGTERM every running process, SIGKILL those still running after ``grace`` seconds."""
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.monotonic() + grace
  for p in procs:
    try:
      p.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def launch(n_processes: int, n_devices: int, main_args: list[str], *, port: int = 0,
           grace: float = 10.0, poll: float = 0.5) -> int:
  """Run the processes to completion; the exit code of the first that failed, else 0."""
  port = port or _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(n_devices),
         "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
  procs = [subprocess.Popen([sys.executable, "-m", "wmtp_jax.main", *main_args,
                             f"--coordinator=127.0.0.1:{port}", f"--num_processes={n_processes}",
                             f"--process_id={i}"], env=env)
           for i in range(n_processes)]
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        i, code = failed[0]
        print(f"launch/local.py: process {i} exited with code {code}; stopping the others",
              file=sys.stderr, flush=True)
        _stop(procs, grace)
        return code
      if all(c == 0 for c in codes):
        return 0
      time.sleep(poll)
  except KeyboardInterrupt:
    _stop(procs, grace)
    return 130


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices", type=int, default=2, help="CPU devices per process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when stopping the others")
  parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then wmtp_jax.main flags")
  args = parser.parse_args()
  main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
  sys.exit(launch(args.processes, args.devices, main_args, port=args.port, grace=args.grace))


if __name__ == "__main__":
  main()
