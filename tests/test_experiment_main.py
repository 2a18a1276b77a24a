"""python -m wmtp_jax.experiment end to end: the smoke experiment (3 arms × 2 seeds, two shared
critics) through the command line, on the default synthetic dataset."""

import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_smoke_experiment_end_to_end(tmp_path):
  """``--list`` prints one command per arm run; the run trains 2 critics and 6 arm runs, all
  finished, and writes the report: the arm runs at equal FLOPs (verifiable 4 steps, baseline
  more), paired differences over 4 problems × 2 seeds, the figures."""
  command = [sys.executable, "-m", "wmtp_jax.experiment", "--config=configs/experiment.py:smoke",
             f"--workdir={tmp_path}"]
  listed = subprocess.run([*command, "--list"], cwd=REPO, capture_output=True, text=True,
                          check=True, timeout=600).stdout.splitlines()
  assert [re.search(r"--run=(\S+)$", line).group(1) for line in listed] == [
      f"{arm}/{seed}" for seed in (0, 1) for arm in ("baseline", "verifiable",
                                                     "verifiable+shuffled")]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = (tmp_path / "report.md").read_text()
  rows = re.findall(r"^\| (\S+) \| finished \| (\d+) \| ([\d.e+]+) \|", report, re.M)
  assert len(rows) == 8  # 2 critics, 6 arm runs
  steps = {name: int(s) for name, s, _ in rows if "/" in name and not name.startswith("_")}
  assert steps["verifiable/0"] == 4 and steps["baseline/0"] > 4
  assert len(list(tmp_path.glob("_shared/*/critic-*/critic/model"))) == 2
  assert re.search(r"\| verifiable \| pass@1 \| [+-][\d.]+ \| \[.*\] \| [\d.e-]+ \| 4 × 2 \|",
                   report)
  for name in ("curves", "weights", "stability"):
    assert (tmp_path / f"{name}.png").is_file()
