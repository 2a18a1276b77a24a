"""The console and the log file of a job (``python -m wmtp_jax.main``), and its closing summary.

The console (stderr) shows this package's own messages from INFO up (phases, the progress lines,
warnings) and other libraries' (Orbax, absl, JAX, …) from WARNING up, except a library's report
of an exception with its traceback: that exception reaches the job, which names it in one line.
``WORKDIR/log.txt`` (process 0, appended across resumes) gets every record from INFO up, with
tracebacks, and the records marked ``FILE_ONLY``: the traceback of a failure told in one line,
and the exceptions Python ignores (``sys.unraisablehook``: Orbax's writer threads, after a failed
save, call into a closed event loop again and again).
"""

import contextlib
import logging
import pathlib
import sys
from collections.abc import Iterator

from absl import logging as absl_logging
import jax

log = logging.getLogger("wmtp_jax")
LOG_FILE = "log.txt"
FILE_ONLY = {"file_only": True}  # ``log.error(…, extra=FILE_ONLY)``: a record for log.txt only
_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Final metrics the summary shows when logged (the report has them all).
_SHOWN = ("loss", "val_loss", "eval_pass_at_1")


@contextlib.contextmanager
def logging_to(workdir: pathlib.Path) -> Iterator[pathlib.Path]:
  """Route the logs as the module docstring says while the block runs; yields the log file's path.
  The log file is opened at its first record, and a failure to write it (a full disk) is silent:
  the failure that caused it is reported on the console."""
  root = logging.getLogger()
  saved = root.handlers[:], root.level, absl_logging.get_verbosity(), sys.unraisablehook
  sys.unraisablehook = _log_unraisable
  console = logging.StreamHandler(sys.stderr)
  console.addFilter(_on_console)
  console.setFormatter(logging.Formatter(_FORMAT))
  root.handlers = [console]  # replaces absl's handler (every record at INFO on stderr)
  root.setLevel(logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO)
  path = workdir / LOG_FILE
  if jax.process_index() == 0:  # (starting JAX's backends logs: after the console's set-up)
    with contextlib.suppress(OSError):
      workdir.mkdir(parents=True, exist_ok=True)
    log_file = _QuietFileHandler(path, mode="a", delay=True)
    log_file.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(log_file)
  handlers = root.handlers[:]
  try:
    yield path
  finally:
    for handler in handlers:
      handler.close()
    root.handlers, level, verbosity, sys.unraisablehook = saved
    root.setLevel(level)
    absl_logging.set_verbosity(verbosity)


def _log_unraisable(unraisable) -> None:
  log.warning("exception ignored in %r", unraisable.object, extra=FILE_ONLY, exc_info=(
      unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))


def _on_console(record: logging.LogRecord) -> bool:
  if getattr(record, "file_only", False):
    return False
  if record.name == "wmtp_jax" or record.name.startswith("wmtp_jax."):
    return record.levelno >= logging.INFO
  return record.levelno >= logging.WARNING and record.exc_info is None


class _QuietFileHandler(logging.FileHandler):
  """A file handler that stops writing, without a word, once a write fails."""

  def handleError(self, record):
    del record
    self.close()
    self.setLevel(logging.CRITICAL + 1)


def summary(report: dict, report_path: pathlib.Path, log_path: pathlib.Path) -> list[str]:
  """The closing lines of a job (``report`` as ``wmtp_jax.main`` writes it): each phase's status,
  step, final and best metrics and model, the evaluation, where the report and the log are, and
  last the job's status (with the error's one line)."""
  lines = []
  for name, phase in report.items():
    if not isinstance(phase, dict):
      continue
    if name == "evaluation" and "finetuned" in phase:
      lines.append("evaluation: held-out pass@1 " + ", ".join(
          f"{k} {v['pass@1']:.3f}" for k, v in phase.items() if isinstance(v, dict)))
      continue
    line = f"{name}: {phase.get('status', '?')}"
    if phase.get("step") is not None:
      line += f" at step {phase['step']}/{phase.get('total_steps', '?')}"
    metrics = phase.get("metrics") or {}
    shown = [f"{k}={metrics[k]:.4g}" for k in _SHOWN if isinstance(metrics.get(k), float)]
    if shown:
      line += "; final " + " ".join(shown)
    if best := phase.get("best"):
      line += f"; best {best['metric']}={best['value']:.4g} at step {best['step']}"
    if phase.get("model"):
      line += f"; model {phase['model']}"
    lines.append(line)
  lines.append(f"report {report_path}; full log {log_path}")
  lines.append(report["status"] + (f": {report['error']}" if report.get("error") else ""))
  return lines
