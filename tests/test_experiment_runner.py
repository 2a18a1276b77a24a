"""experiment.runner: prerequisites trained once, finished runs skipped, interrupted ones run
again, blocked dependents, the per-run lock. The runs are stand-in processes (a short Python
program per run that records its call and writes the report.json a job would)."""

import collections
import json
import pathlib
import sys

import pytest

from wmtp_jax.config import common as config_lib
from wmtp_jax.experiment import grid, runner

FAKE_JOB = """
import json, pathlib, sys
workdir, calls, status, name = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with open(calls, "a") as f:
  f.write(name + "\\n")
if status != "none":
  (workdir / "report.json").write_text(json.dumps({"status": status}))
"""


@pytest.fixture
def fake_jobs(tmp_path, monkeypatch):
  """``(runs of the smoke experiment in tmp_path/exp, {run name: status its next job ends
  with}, calls)``; ``calls()`` counts the jobs started per run."""
  root = tmp_path / "exp"
  outcomes: dict[str, str] = {}
  calls_file = tmp_path / "calls.txt"

  def command(run, root_):
    return [sys.executable, "-c", FAKE_JOB, str(run.workdir(root_)), str(calls_file),
            outcomes.pop(run.name, "finished"), run.name]

  monkeypatch.setattr(grid.Run, "command", command)
  runs = grid.expand(config_lib.load("experiment", "smoke"), root, lambda config: 1.0)
  calls = lambda: collections.Counter(calls_file.read_text().split() if calls_file.is_file()
                                      else [])
  return root, runs, outcomes, calls


def test_prerequisites_run_once_and_finished_runs_are_skipped(fake_jobs):
  """Smoke: 2 seeds × 3 arms; the two verifiable arms of a seed share its critic, trained once.
  A second pass starts nothing."""
  root, runs, _, calls = fake_jobs
  outcome = runner.run_all(runs, root, say=lambda line: None)
  assert set(outcome.values()) == {"finished"}
  counted = calls()
  assert sum(counted.values()) == 8 and set(counted.values()) == {1}
  assert sum(1 for name in counted if name.startswith("_shared/")) == 2
  again = runner.run_all(runs, root, say=lambda line: None)
  assert set(again.values()) == {"skipped"} and calls() == counted


def test_an_interrupted_run_starts_again_and_a_failed_prerequisite_blocks(fake_jobs):
  root, runs, outcomes, calls = fake_jobs
  critic0 = next(r.name for r in runs if r.name.startswith("_shared/0/"))
  outcomes.update({"baseline/1": "preempted", "verifiable/1": "none", critic0: "failed"})
  first = runner.run_all(runs, root, say=lambda line: None)
  assert first["baseline/1"] == "preempted" and first["verifiable/1"] == "incomplete"
  assert first[critic0] == "failed"
  assert first["verifiable/0"] == first["verifiable+shuffled/0"] == "blocked"
  assert "verifiable/0" not in calls()
  second = runner.run_all(runs, root, say=lambda line: None)
  assert second["baseline/1"] == second["verifiable/1"] == second[critic0] == "finished"
  assert second["verifiable/0"] == "finished" and second["baseline/0"] == "skipped"
  assert calls()["baseline/1"] == 2 and calls()["verifiable/0"] == 1


def test_a_locked_run_is_left_to_the_process_holding_it(fake_jobs):
  """While another holder has ``DIR/<run>/.lock`` the runner neither starts nor reports the run
  as its own (``busy``); a run only waits for a locked prerequisite."""
  root, runs, _, calls = fake_jobs
  held = root / "baseline" / "0"
  with runner.locked(held, wait=False) as mine:
    assert mine and runner.is_locked(held)
    outcome = runner.run_all(runs, root, say=lambda line: None)
  assert outcome["baseline/0"] == "busy" and "baseline/0" not in calls()
  assert not runner.is_locked(held)
  assert runner.run_all(runs, root, say=lambda line: None)["baseline/0"] == "finished"


def test_one_run_with_its_prerequisites(fake_jobs):
  root, runs, _, calls = fake_jobs
  chosen = runner.with_prerequisites(runs, "verifiable/1")
  assert [r.name.split("/")[0] for r in chosen] == ["_shared", "verifiable"]
  runner.run_all(chosen, root, say=lambda line: None)
  assert sum(calls().values()) == 2
  assert json.loads((root / "verifiable" / "1" / "report.json").read_text())["status"] == (
      "finished")
  with pytest.raises(ValueError, match="--run=nope/0: no such run"):
    runner.with_prerequisites(runs, "nope/0")


def test_status_of_a_run_directory(tmp_path):
  assert runner.status(tmp_path / "missing") == "not started"
  assert runner.status(tmp_path) == "incomplete"
  (tmp_path / "report.json").write_text('{"status": "fai')  # cut short
  assert runner.status(tmp_path) == "incomplete"
  (tmp_path / "report.json").write_text('{"status": "failed", "error": "x"}')
  assert runner.status(pathlib.Path(tmp_path)) == "failed"
