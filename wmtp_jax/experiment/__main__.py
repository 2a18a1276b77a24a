"""``python -m wmtp_jax.experiment --config=configs/experiment.py[:variant] --workdir=DIR
[--list | --report | --run=ARM/SEED]``

Without an action: trains every run of the experiment that has not finished (prerequisites first,
``runner``) and writes ``DIR/report.md``. ``--list`` prints one command per arm run (for a
cluster: ``launch/experiment.sbatch`` runs them as a SLURM array); ``--run=ARM/SEED`` trains that
run and the prerequisites it needs (waiting for another process training them); ``--report``
writes the report from whatever has finished. Exit status 1 when a run did not finish.
"""

import pathlib
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from wmtp_jax.experiment import grid, report, runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/experiment.py[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "the experiment directory DIR")
_LIST = flags.DEFINE_boolean("list", False, "print one command per run and exit")
_REPORT = flags.DEFINE_boolean("report", False, "write DIR/report.md from the finished runs")
_RUN = flags.DEFINE_string("run", None, "train only this run (ARM/SEED) and its prerequisites")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--config=configs/experiment.py[:variant] and --workdir=DIR are required")
  experiment, root = _CONFIG.value, pathlib.Path(_WORKDIR.value).resolve()
  try:
    runs = grid.expand(experiment, root, runner.mean_step_flops)
  except ValueError as e:
    print(f"python -m wmtp_jax.experiment: error: {e}", file=sys.stderr)
    sys.exit(1)
  if _LIST.value:
    config_flag = f"--config={config_flags.get_config_filename(flags.FLAGS['config'])}"
    for run in runs:
      if run.arm:
        print(shlex.join([sys.executable, "-m", "wmtp_jax.experiment", config_flag,
                          f"--workdir={root}", f"--run={run.name}"]))
    return
  if _REPORT.value:
    print(f"report: {report.write(experiment, runs, root)}")
    return
  chosen = runner.with_prerequisites(runs, _RUN.value) if _RUN.value else runs
  outcome = runner.run_all(chosen, root)
  print(f"report: {report.write(experiment, runs, root)}")
  if any(s not in (runner.FINISHED, "skipped") for s in outcome.values()):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
