"""``python -m wmtp_jax.main --config=configs/<pipeline>.py[:variant] [--config.a.b=v …]
[--workdir=DIR]``

Runs one pipeline. Frozen models a pipeline needs (the ``verifiable`` critic, the ``rho1``
reference) are trained first into ``WORKDIR/<name>`` when their ``checkpoint`` is empty; policy
pipelines then report held-out pass@1 of the trained policy next to the untrained one
(``config.evaluate``). Restarting the same command resumes where it stopped.

Multi-process (one process per host or per GPU; ``launch/`` has SLURM, TPU-pod and local
launchers): ``--distributed`` initialises JAX's runtime from the environment (SLURM, TPU pods, …),
or ``--coordinator=HOST:PORT --num_processes=N --process_id=I`` explicitly; every process runs the
same command and sees all devices of all processes.
"""

import json
import logging
import pathlib

from absl import app, flags
import jax
from ml_collections import config_flags

from wmtp_jax import eval as eval_lib
from wmtp_jax.config import common as config_lib
from wmtp_jax.eval import compare, interval
from wmtp_jax.training import loop

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


def train_prerequisites(config, workdir: pathlib.Path) -> dict:
  """Train what ``config`` needs first into ``WORKDIR/<name>``: the frozen models (``critic``,
  ``reference``) whose ``checkpoint`` is empty, from their ``run`` configs, pointing
  ``checkpoint`` there; and the shared value head's pre-training stage, whose model the policy
  run then starts from (``config.init.checkpoint``)."""
  report = {}
  for name in ("critic", "reference"):
    section = config.get(name)
    if section is not None and not section.checkpoint:
      log.info("no config.%s.checkpoint: training the %s first in %s", name, name, workdir / name)
      report[name] = loop.run(section.run, workdir / name, phase=name)
      section.checkpoint = str(workdir / name)
  shared = config.get("shared_head")
  if shared is not None and shared.stage == "weighted":
    if not shared.checkpoint:
      log.info("no config.shared_head.checkpoint: pre-training the value head first in %s",
               workdir / "shared_head")
      report["shared_head"] = loop.run(config_lib.shared_head_pretraining(config),
                                        workdir / "shared_head", phase="shared_head")
      shared.checkpoint = str(workdir / "shared_head")
    config.init.checkpoint = shared.checkpoint
  return report


def run(config, workdir: pathlib.Path) -> dict:
  """Train ``config`` (and the frozen models it needs) in ``workdir``; returns the final report."""
  if config.pipeline == "evaluate":
    return eval_lib.run(config, workdir)
  config_lib.check_required(config)
  report = train_prerequisites(config, workdir)
  hooks = (interval.hook(config),) if config.evaluate.every_steps else ()
  report[config.pipeline] = loop.run(config, workdir / config.pipeline, hooks=hooks)
  if config.evaluate.enabled:
    report["evaluation"] = compare.trained_vs_untrained(config, workdir / config.pipeline)
  write_report(workdir, report)
  return report


def write_report(workdir: pathlib.Path, report: dict) -> None:
  """``WORKDIR/report.json``, written by process 0 only (every process holds the same report)."""
  if jax.process_index() == 0:
    (workdir / "report.json").write_text(json.dumps(report, indent=2, default=float))


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config=configs/<pipeline>.py is required")
  if _COORDINATOR.value or _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    log.info("process %d of %d: %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
  workdir = pathlib.Path(_WORKDIR.value or f"runs/{config.pipeline}-{config.variant}")
  run(config, workdir)


if __name__ == "__main__":
  app.run(main)
