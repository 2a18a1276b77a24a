"""``python -m wmtp_jax.main --config=configs/<pipeline>.py[:variant] [--config.a.b=v …]
[--workdir=DIR]``

Runs one pipeline. A run whose ``init.checkpoint`` is empty starts from the tiny pretrained base
``init.base`` (the tiny default), built once into the cache (``training.bases``). Frozen models a
pipeline needs (the ``verifiable`` critic, the ``rho1`` reference) are trained first into
``WORKDIR/<name>`` when their ``checkpoint`` is empty, with the job's ``seed``; policy
pipelines then evaluate the base and the fine-tuned policy on held-out problems (pass@k, greedy
pass@1, per-head accuracy; ``config.evaluate``, ``eval.compare``). Restarting the same command
resumes where it stopped; restarting a finished job reports again (each phase's final metrics
read back from its ``metrics.jsonl``).

Exit status: 0 finished; 75 (``EX_TEMPFAIL``, "try again") stopped by SIGTERM or SIGINT (Ctrl-C):
the running phase saved a checkpoint, no later phase started, and the same command resumes; 1
failed. ``WORKDIR/report.json`` holds the job's ``status`` (``"finished"`` | ``"preempted"`` |
``"failed"``, with the failure's one-line ``error``) and one entry per phase (``status``,
``step`` of ``total_steps``, final ``metrics``, ``best``, ``model``; ``evaluation``: base vs
fine-tuned, its per-problem results in ``WORKDIR/<pipeline>/eval/problems.jsonl``).
The console shows this package's messages and the libraries' warnings; ``WORKDIR/log.txt`` has
the full log (``training.console``). A known failure (full disk, permission denied, missing file,
corrupt checkpoint, unknown config key, …: ``failures``) is one line naming its culprit, its
traceback in the log; every job ends with a short summary, its status last.

Multi-process (one process per host or per GPU; ``launch/`` has SLURM, TPU-pod and local
launchers): ``--distributed`` initialises JAX's runtime from the environment (SLURM, TPU pods, …),
or ``--coordinator=HOST:PORT --num_processes=N --process_id=I`` explicitly; every process runs the
same command and sees all devices of all processes.
"""

import dataclasses
import json
import logging
import pathlib
import signal
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from wmtp_jax import eval as eval_lib, failures
from wmtp_jax.config import common as config_lib
from wmtp_jax.eval import compare, critic as critic_eval, interval
from wmtp_jax.training import bases, console, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<pipeline>.py[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "run directory (default: runs/<pipeline>-<variant>)")
_DISTRIBUTED = flags.DEFINE_boolean("distributed", False,
                                    "multi-process JAX, set up from the environment (SLURM, TPU)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (multi-process)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes (with --coordinator)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process (with --coordinator)")

log = logging.getLogger("wmtp_jax")
REPORT_FILE = "report.json"
_STATUS = {failures.FINISHED: "finished", failures.PREEMPTED: "preempted",
           failures.FAILED: "failed"}


def train_prerequisites(config, workdir: pathlib.Path, report: dict | None = None) -> dict:
  """Train what ``config`` needs first: the tiny pretrained base it starts from
  (``config.init.base``, built once into the cache: ``training.bases``), the frozen models
  (``critic``, ``reference``) whose ``checkpoint`` is empty, from their ``run`` configs (with the
  job's ``seed``, from their own bases) into ``WORKDIR/<name>``, pointing ``checkpoint`` there;
  and the shared value head's pre-training stage, whose model the policy run then starts from
  (``config.init.checkpoint``). A ``pretrain`` job reads its corpus (``bases.use_corpus``). Adds
  each phase's report to ``report`` (a new dict by default) and returns it."""
  report = {} if report is None else report
  _resolve_base(config, report)
  for name in ("critic", "reference"):
    section = config.get(name)
    if section is not None and not section.checkpoint:
      section.run.seed = config.seed
      _resolve_base(section.run, report)
      log.info("no config.%s.checkpoint: training the %s first in %s", name, name, workdir / name)
      _train(report, name, section.run, workdir / name, hooks=_hooks(section.run))
      section.checkpoint = str(workdir / name)
  if config.pipeline == "pretrain":
    bases.use_corpus(config)
  shared = config.get("shared_head")
  if shared is not None and shared.stage == "weighted":
    if not shared.checkpoint:
      log.info("no config.shared_head.checkpoint: pre-training the value head first in %s",
               workdir / "shared_head")
      _train(report, "shared_head", config_lib.shared_head_pretraining(config),
             workdir / "shared_head")
      shared.checkpoint = str(workdir / "shared_head")
    config.init.checkpoint = shared.checkpoint
  return report


def _resolve_base(config, report: dict) -> None:
  """``bases.resolve``: ``report["base_<kind>"]`` says where the base is and whether this job
  built it (with the pre-training's outcome) or found it in the cache."""
  name = f"base_{config.init.base}"
  resolved = bases.resolve(config, lambda base, run_dir: _train(report, name, base, run_dir))
  if resolved is not None:
    path, built = resolved
    report[name] = {**(report[name] if built else {"status": "finished"}), "model": str(path),
                    "cached": not built}


def _hooks(config) -> tuple:
  """A critic's held-out diagnostics (``eval.critic``); a policy's held-out pass@1 if asked."""
  if config.pipeline == "critic":
    return (critic_eval.hook(config),)
  return (interval.hook(config),) if config.evaluate.every_steps else ()


def _train(report: dict, name: str, config, workdir: pathlib.Path, **kwargs) -> None:
  """``report[name]``: the outcome of ``loop.train`` (``{"status": "started"}`` while it runs)."""
  report[name] = {"status": "started"}
  try:
    report[name] = dataclasses.asdict(loop.train(config, workdir, phase=name, **kwargs))
  except loop.Preempted as e:
    report[name] = dataclasses.asdict(e.outcome)
    raise


def run(config, workdir: pathlib.Path) -> dict:
  """Train ``config`` (and the frozen models it needs) in ``workdir``; returns the report of each
  phase. ``WORKDIR/report.json`` holds them with the job's status, also when a phase was stopped
  (``loop.Preempted``: no later phase starts) or failed; the error is raised again."""
  if config.pipeline == "evaluate":
    return eval_lib.run(config, workdir)
  report, error = _run(config, workdir)
  if error is not None:
    raise error
  return {k: v for k, v in report.items() if k != "status"}


def _run(config, workdir: pathlib.Path) -> tuple[dict, BaseException | None]:
  """``(the job's report, what stopped it or None)``; the report is written."""
  phases: dict = {}
  error = None
  try:
    config_lib.check_required(config)
    compare.check_config(config)
    train_prerequisites(config, workdir, phases)
    _train(phases, config.pipeline, config, workdir / config.pipeline, hooks=_hooks(config))
    if config.evaluate.enabled:
      phases["evaluation"] = {"status": "started"}
      phases["evaluation"] = {"status": "finished", **compare.base_vs_finetuned(
          config, workdir / config.pipeline)}
    status = "finished"
  except (loop.Preempted, KeyboardInterrupt) as e:
    status, error = "preempted", e
  except Exception as e:  # pylint: disable=broad-except  (reported, then raised again)
    status, error = "failed", e
  for phase in phases.values():
    if phase.get("status") == "started":
      phase["status"] = status
  error_line = {"error": failures.one_line(error)} if status == "failed" else {}
  report = {"status": status, **error_line, **phases}
  try:
    write_report(workdir, report)
  except OSError as e:
    if error is None:
      raise
    log.warning("%s not written: %s", workdir / REPORT_FILE, e, extra=console.FILE_ONLY)
  return report, error


def write_report(workdir: pathlib.Path, report: dict) -> None:
  """``WORKDIR/report.json``, written by process 0 only (every process holds the same report)."""
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / REPORT_FILE).write_text(json.dumps(report, indent=2, default=float))


def run_job(config, workdir: pathlib.Path) -> int:
  """``run`` as the command runs it; returns the exit status (``failures``). The console and
  ``WORKDIR/log.txt`` are set up (``training.console``); outside the train loop (which saves a
  checkpoint first) SIGTERM stops at once, as Ctrl-C does; a known failure is one line (its
  traceback in log.txt), an unknown one also shows its traceback; a summary closes the job."""
  workdir = pathlib.Path(workdir)
  with console.logging_to(workdir) as log_path:
    if jax.process_count() > 1:
      log.info("process %d of %d: %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
    log.info("%s job in %s (log %s)", config.pipeline, workdir, log_path)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    report: dict = {}
    try:
      if config.pipeline == "evaluate":
        eval_lib.run(config, workdir)
      else:
        report, error = _run(config, workdir)
        if error is not None:
          raise error
      status = failures.FINISHED
    except (loop.Preempted, KeyboardInterrupt) as e:
      log.warning("%s; the same command resumes", e or "interrupted outside the train loop")
      status = failures.PREEMPTED
    except Exception as e:  # pylint: disable=broad-except  (the exit status says it)
      if failures.describe(e):
        log.error("traceback of the failure", exc_info=e, extra=console.FILE_ONLY)
      else:
        log.error("unexpected error", exc_info=e)
      report.setdefault("error", failures.one_line(e))
      status = failures.FAILED
    finally:
      signal.signal(signal.SIGTERM, previous)
    report.setdefault("status", _STATUS[status])
    if jax.process_index() == 0:
      *lines, last = console.summary(report, workdir / REPORT_FILE, log_path)
      for line in lines:
        log.info("%s", line)
      log.log({failures.FINISHED: logging.INFO, failures.PREEMPTED: logging.WARNING}.get(
          status, logging.ERROR), "%s", last)
  return status


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an unknown ``--config.<key>`` told in one line (ml_collections
  raises an ``AttributeError`` / ``KeyError`` whose repr garbles its "Did you mean")."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, OSError):
    path = _flag_value(argv, "config")
    if path is None:
      raise
    config = flags.FLAGS["config"].parser.parse(path)
    try:
      config.get("pipeline")
    except OSError as load_error:
      _exit_with(_load_error(path.split(":")[0], load_error))
    for arg in argv[1:]:
      if arg.startswith("--config."):
        line = failures.unknown_config_key(config, arg[len("--config."):].partition("=")[0])
        if line:
          _exit_with(line)
    raise


def _load_error(path: str, error: OSError) -> str:
  """One line for a config file ml_collections could not load (``error``: its deferred error)."""
  if not pathlib.Path(path).is_file():
    return f"config file not found: {path}"
  return f"config file {path} not loaded: {failures.one_line(error.__cause__ or error)}"


def _flag_value(argv: list[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.partition("=")[2]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _exit_with(line: str) -> None:
  print(f"python -m wmtp_jax.main: error: {line}", file=sys.stderr)
  sys.exit(failures.FAILED)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/<pipeline>.py is required")
  try:
    pipeline = config.pipeline
  except OSError as e:  # ml_collections defers a config file's load error to the first access
    _exit_with(_load_error(config_flags.get_config_filename(flags.FLAGS["config"]), e))
  if _COORDINATOR.value or _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  workdir = pathlib.Path(_WORKDIR.value or f"runs/{pipeline}-{config.variant}")
  try:  # a missing required key stops the job before anything (log.txt …) is written
    config_lib.check_required(config)
  except ValueError as e:
    _exit_with(str(e))
  sys.exit(run_job(config, workdir))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
