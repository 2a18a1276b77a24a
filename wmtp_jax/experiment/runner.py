"""Running the runs of an experiment: prerequisites first, finished runs skipped, one process
per run directory at a time.

Each run is its own process (``Run.command``: ``python -m wmtp_jax.main …``), so a crash, a
signal or a jit cache stays inside it; its console output goes to ``DIR/<run>/console.txt`` and
its full log to ``DIR/<run>/log.txt`` (``wmtp_jax.main``). A run whose ``report.json`` says
``"finished"`` is skipped; any other is started again, and the train loop resumes it from its last
checkpoint. ``DIR/<run>/.lock`` (``flock``) is held while a run runs: another runner on the same
``DIR`` skips a locked run (and waits for a locked prerequisite, which it needs), so two runners
never train one run at once. A run whose prerequisite did not finish is not started
(``"blocked"``). The runs share JAX's persistent compilation cache, ``DIR/_jax_cache`` (unless
``JAX_COMPILATION_CACHE_DIR`` is set): seeds and arms of one shape compile their steps once.
"""

import contextlib
import fcntl
import json
import math
import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator

from wmtp_jax import objectives
from wmtp_jax.data import run_data
from wmtp_jax.experiment.grid import Run
from wmtp_jax.training import flops, loop

LOCK_FILE = ".lock"
REPORT_FILE = "report.json"  # written by wmtp_jax.main
CONSOLE_FILE = "console.txt"
JAX_CACHE_DIR = "_jax_cache"
FINISHED = "finished"


def mean_step_flops(config) -> float:
  """The mean train FLOPs of a step of the run ``config`` (``loop.mean_step_shapes``)."""
  objective = objectives.build(config)
  shapes = loop.mean_step_shapes(run_data.build(config, objective, None))
  return math.fsum(flops.step_flops(objective, *shape) for shape in shapes) / len(shapes)


def status(workdir: pathlib.Path) -> str:
  """``report.json``'s ``status`` of a run (``"finished"`` | ``"preempted"`` | ``"failed"``),
  ``"not started"`` without a run directory, ``"incomplete"`` without a report."""
  path = workdir / REPORT_FILE
  if path.is_file():
    try:
      return json.loads(path.read_text()).get("status", "incomplete")
    except json.JSONDecodeError:
      return "incomplete"
  return "incomplete" if workdir.is_dir() else "not started"


@contextlib.contextmanager
def locked(workdir: pathlib.Path, *, wait: bool) -> Iterator[bool]:
  """Holds ``workdir/.lock`` (waiting for it with ``wait``); yields False when another process
  holds it and ``wait`` is off."""
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / LOCK_FILE, "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def is_locked(workdir: pathlib.Path) -> bool:
  """Whether a process holds the run's lock now (it is running)."""
  if not (workdir / LOCK_FILE).is_file():
    return False
  with locked(workdir, wait=False) as mine:
    return not mine


def execute(run: Run, root: pathlib.Path, *, wait: bool = False) -> str:
  """Runs ``run`` unless it finished before; returns its status afterwards, ``"skipped"`` when it
  had finished, or ``"busy"`` when another process holds its lock (without ``wait``)."""
  workdir = run.workdir(root)
  with locked(workdir, wait=wait) as mine:
    if not mine:
      return "busy"
    if status(workdir) == FINISHED:
      return "skipped"
    with open(workdir / CONSOLE_FILE, "a") as console:
      env = {"JAX_COMPILATION_CACHE_DIR": str(root / JAX_CACHE_DIR), **os.environ}
      subprocess.run(run.command(root), stdout=console, stderr=subprocess.STDOUT, check=False,
                     env=env)
    return status(workdir)


def run_all(runs: list[Run], root: pathlib.Path,
            say: Callable[[str], None] = print) -> dict[str, str]:
  """Runs ``runs`` in order (prerequisites come first: ``grid.expand``); ``{name: status}``."""
  outcome: dict[str, str] = {}
  for run in runs:
    missing = [n for n in run.needs if outcome.get(n) not in (FINISHED, "skipped")]
    if missing:
      outcome[run.name] = "blocked"
      say(f"{run.name}: blocked (prerequisite {', '.join(missing)} not finished)")
      continue
    say(f"{run.name}: running ({run.workdir(root) / 'log.txt'})")
    outcome[run.name] = execute(run, root, wait=not run.arm)
    say(f"{run.name}: {outcome[run.name]}")
  return outcome


def with_prerequisites(runs: list[Run], name: str) -> list[Run]:
  """The run ``name`` (``<arm>/<seed>``) and the prerequisites it needs, prerequisites first."""
  by_name = {r.name: r for r in runs}
  if name not in by_name:
    raise ValueError(f"--run={name}: no such run (runs: {', '.join(r.name for r in runs)})")
  run = by_name[name]
  return [*(by_name[n] for n in run.needs), run]
