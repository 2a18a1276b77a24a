"""How a job ends (issue 12): a finished job reported again, preemption (SIGTERM / SIGINT: exit
status 75, report and resume), failures in one line (disk full, permission denied, missing file,
corrupt checkpoint, unknown config key), the console vs ``WORKDIR/log.txt``, resume hygiene
(no duplicate metrics rows, a failed start does not block the corrected command)."""

import errno
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from conftest import tiny_config
from train_helpers import ROOT
from wmtp_jax import failures, main as main_lib
from wmtp_jax.checkpoints import integrity
from wmtp_jax.training import console, loop, metrics_log


def _report(workdir: pathlib.Path) -> dict:
  return json.loads((workdir / "report.json").read_text())


def _step_losses(workdir: pathlib.Path) -> list[int]:
  """The steps of the train rows of ``metrics.jsonl``, in file order (duplicates kept)."""
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["step"] for r in rows if "step_loss" in r]


def _console(capfd) -> list[str]:
  return [l for l in capfd.readouterr().err.splitlines() if l.strip()]


def test_rerun_of_a_finished_job_reports_again_and_the_console_is_short(small_dataset, tmp_path,
                                                                        capfd):
  """A finished job run again writes the same report (it was ``{"baseline": {}}``); the console
  has this package's lines and no Orbax INFO chatter, which log.txt keeps (appended); the job
  ends with a summary: the phase's step, final and best metrics, model, report, status."""
  config = tiny_config("baseline", small_dataset)
  assert main_lib.run_job(config, tmp_path) == failures.FINISHED
  first = _report(tmp_path)
  console = _console(capfd)
  phase = first["baseline"]
  assert first["status"] == "finished" and phase["status"] == "finished"
  assert (phase["step"], phase["total_steps"]) == (4, 4)
  assert phase["model"] == str(tmp_path / "baseline" / "model")
  # policies keep the best unweighted validation CE (the weighted one differs between methods)
  assert phase["best"]["metric"] == "val_unweighted" and phase["best"]["step"] in (2, 4)
  assert set(phase["metrics"]) >= {"step_loss", "val_loss", "loss", "lr/default"}
  assert console[-1].endswith("INFO finished")
  assert f"report {tmp_path / 'report.json'}; full log {tmp_path / 'log.txt'}" in console[-2]
  assert "baseline: finished at step 4/4; final loss=" in console[-3]
  assert "; best val_unweighted=" in console[-3] and f"; model {tmp_path}" in console[-3]
  assert any("[baseline] step 4/4" in l for l in console)
  assert not any("absl" in l or "orbax" in l.lower() for l in console), console
  log_txt = (tmp_path / "log.txt").read_text()
  assert "[baseline] step 4/4" in log_txt and "orbax" in log_txt.lower()

  rows_before = (tmp_path / "baseline" / "metrics.jsonl").read_text()
  assert main_lib.run_job(config, tmp_path) == failures.FINISHED
  assert _report(tmp_path) == first
  assert (tmp_path / "baseline" / "metrics.jsonl").read_text() == rows_before
  assert (tmp_path / "log.txt").read_text().count("baseline job in") == 2
  assert _console(capfd)[-1].endswith("INFO finished")


_JOB_SCRIPT = textwrap.dedent("""
    import os, pathlib, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from wmtp_jax import main
    from wmtp_jax.training import metrics_log
    pipeline, workdir, sig, phase, at = sys.argv[1:6]
    config = tiny_config(pipeline, pathlib.Path({data!r}), steps=6 if pipeline == "baseline" else 2,
                         eval_every=0)
    if pipeline != "baseline":
      config.critic.run.train.steps = 4
    write = metrics_log.MetricsLogger.write
    def signalling(self, step, scalars, *args, **kwargs):
      write(self, step, scalars, *args, **kwargs)
      if self.phase == phase and step == int(at) and "step_loss" in scalars:
        os.kill(os.getpid(), getattr(signal, sig))
    metrics_log.MetricsLogger.write = signalling
    sys.exit(main.run_job(config, pathlib.Path(workdir)))
""")


def _job(tmp_path, small_dataset, pipeline, workdir, sig="SIGTERM", phase="", at=0):
  """Run the job in a subprocess that sends itself ``sig`` once ``phase`` logged step ``at``."""
  script = tmp_path / "job.py"
  script.write_text(_JOB_SCRIPT.format(tests=str(ROOT / "tests"), data=str(small_dataset)))
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, script, pipeline, workdir, sig, phase, str(at)], env=env,
                        timeout=900, capture_output=True, text=True)


# slow: the SIGINT subprocess test below covers exit status 75 through main, and
# test_loop.py::test_exact_resume_after_kill_and_sigterm covers SIGTERM's checkpoint and resume.
@pytest.mark.slow
def test_sigterm_stops_with_status_75_and_the_next_run_resumes(small_dataset, tmp_path):
  """SIGTERM while step 2 is logged (step 3 runs): checkpoint of step 3, exit 75 (was 0), a report
  saying so; the same command then finishes, with every step logged once."""
  job = tmp_path / "job"
  stopped = _job(tmp_path, small_dataset, "baseline", job, "SIGTERM", "baseline", 2)
  assert stopped.returncode == failures.PREEMPTED, stopped.stderr
  report = _report(job)
  assert report["status"] == "preempted"
  assert {k: report["baseline"][k] for k in ("status", "step", "total_steps", "model")} == {
      "status": "preempted", "step": 3, "total_steps": 6, "model": None}
  assert (job / "baseline" / "checkpoints" / "3").is_dir()
  assert not (job / "baseline" / "model").exists()
  err = stopped.stderr.strip().splitlines()
  assert err[-1].endswith("WARNING preempted") and "Traceback" not in stopped.stderr
  assert any("SIGTERM stopped it after step 3 of 6; the same command resumes" in l for l in err)

  resumed = _job(tmp_path, small_dataset, "baseline", job)
  assert resumed.returncode == failures.FINISHED, resumed.stderr
  assert _report(job)["baseline"]["status"] == "finished"
  assert _step_losses(job / "baseline") == [1, 2, 3, 4, 5, 6]


def test_sigint_in_the_critic_stops_the_job_before_the_policy(small_dataset, tmp_path):
  """Ctrl-C while the critic trains: the critic saves a checkpoint and the job stops with 75 (it
  saved nothing, and SIGTERM went on to the policy and failed on the missing critic); the next
  run resumes the critic and trains the policy."""
  job = tmp_path / "job"
  stopped = _job(tmp_path, small_dataset, "verifiable", job, "SIGINT", "critic", 1)
  assert stopped.returncode == failures.PREEMPTED, stopped.stderr
  report = _report(job)
  assert report["status"] == "preempted" and set(report) == {"status", "critic"}
  assert (report["critic"]["status"], report["critic"]["step"]) == ("preempted", 2)
  assert (job / "critic" / "checkpoints" / "2").is_dir()
  assert not (job / "verifiable").exists()

  resumed = _job(tmp_path, small_dataset, "verifiable", job)
  assert resumed.returncode == failures.FINISHED, resumed.stderr
  report = _report(job)
  assert [report[k]["status"] for k in ("critic", "verifiable")] == ["finished"] * 2
  assert _step_losses(job / "critic") == [1, 2, 3, 4]


def test_no_duplicate_metrics_rows_after_a_resume(small_dataset, tmp_path, monkeypatch):
  """A crash after step 5 was logged (last checkpoint: step 4): the resumed run logs step 5
  again, and metrics.jsonl keeps it once (it had it twice)."""
  config = tiny_config("baseline", small_dataset, steps=6, eval_every=0)
  config.checkpoint.update(every_steps=2, keep=10, best_metric="")
  write = metrics_log.MetricsLogger.write

  def crash_after_step_5(self, step, scalars, *args, **kwargs):
    write(self, step, scalars, *args, **kwargs)
    if step == 5 and "step_loss" in scalars:
      raise RuntimeError("crash")

  monkeypatch.setattr(metrics_log.MetricsLogger, "write", crash_after_step_5)
  with pytest.raises(RuntimeError, match="crash"):
    loop.run(config, tmp_path)
  monkeypatch.setattr(metrics_log.MetricsLogger, "write", write)
  assert _step_losses(tmp_path) == [1, 2, 3, 4, 5]
  loop.run(config, tmp_path)
  assert _step_losses(tmp_path) == [1, 2, 3, 4, 5, 6]
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "memory/temp_mib" in r] == [0, 4]


def test_a_failed_start_does_not_block_the_corrected_command(small_dataset, tmp_path):
  """A start that fails (bad data dir) left config.json, which refused the corrected command;
  against a checkpoint a different config is still refused."""
  config = tiny_config("baseline", small_dataset, steps=2)
  config.data.dir = str(tmp_path / "no_such_data")
  with pytest.raises(FileNotFoundError, match="no_such_data"):
    loop.run(config, tmp_path / "run")
  assert (tmp_path / "run" / "config.json").is_file()
  config.data.dir = str(small_dataset)
  loop.run(config, tmp_path / "run")
  assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["dir"] == str(
      small_dataset)
  config.optim.lr = 0.5
  with pytest.raises(ValueError, match=r"config\.json holds a different run's config.*optim\.lr"):
    loop.run(config, tmp_path / "run")


def _failed_job(config, workdir, capfd) -> list[str]:
  assert main_lib.run_job(config, workdir) == failures.FAILED
  return _console(capfd)


def test_missing_file_and_permission_denied_are_one_line(small_dataset, tmp_path, capfd,
                                                         monkeypatch):
  """A missing data dir and a denied write (simulated: the tests run as root, which permissions
  do not stop) end the console with one line naming the path; tracebacks go to log.txt."""
  config = tiny_config("baseline", small_dataset)
  config.data.dir = str(tmp_path / "no_such_data")
  console = _failed_job(config, tmp_path / "a", capfd)
  assert console[-1].endswith(f"ERROR failed: missing file: config.data.dir="
                              f"'{tmp_path / 'no_such_data'}' is not a directory")
  assert not any("Traceback" in l for l in console)
  assert "Traceback" in (tmp_path / "a" / "log.txt").read_text()
  report = _report(tmp_path / "a")
  assert report["status"] == "failed" and report["baseline"] == {"status": "failed"}
  assert report["error"].startswith("missing file: config.data.dir=")

  denied = tmp_path / "b" / "baseline" / "config.json"

  def deny(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied", str(denied))

  monkeypatch.setattr(loop.checkpointing, "check_run_config", deny)
  console = _failed_job(tiny_config("baseline", small_dataset), tmp_path / "b", capfd)
  assert console[-1].endswith(f"ERROR failed: permission denied: {denied}")
  assert not any("Traceback" in l for l in console)


def test_an_unknown_error_keeps_its_traceback_on_the_console(small_dataset, tmp_path, capfd,
                                                            monkeypatch):
  def bug(*args, **kwargs):
    raise TypeError("a bug")

  monkeypatch.setattr(loop.objectives, "build", bug)
  console = _failed_job(tiny_config("baseline", small_dataset), tmp_path, capfd)
  assert console[-1].endswith("ERROR failed: TypeError: a bug")
  assert any(l.startswith("Traceback") for l in console)


def test_describe_names_the_culprit_of_each_known_failure(tmp_path):
  full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "f"))
  assert failures.describe(full).startswith(f"disk full: no space left on device writing "
                                            f"{tmp_path / 'f'} (filesystem /")
  wrapped = ValueError('RESOURCE_EXHAUSTED: Error writing "x/0" in OCDBT database at local file '
                       f'"{tmp_path}/ckpt/": Failed writing: "{tmp_path}/ckpt/d/0c7c": Failed to '
                       "write 477341 bytes to file 23: No space left on device "
                       "[os_error_code='28']")
  try:
    try:
      raise wrapped
    except ValueError as e:
      raise RuntimeError("Event loop is closed") from e
  except RuntimeError as e:
    assert failures.describe(e).startswith(f"disk full: no space left on device writing "
                                           f"{tmp_path}/ckpt/d/0c7c (filesystem /")
  corrupt = integrity.CorruptCheckpointError(f"{tmp_path}/7/state: checksum mismatch\nmore")
  assert failures.describe(corrupt) == f"corrupt checkpoint: {tmp_path}/7/state: checksum mismatch"
  assert failures.describe(FileNotFoundError(2, "No such file", "x.json")) == "missing file: x.json"
  denied = PermissionError(errno.EACCES, "Permission denied", "/p")
  assert failures.describe(denied) == "permission denied: /p"
  assert failures.describe(TypeError("bug")) is None
  assert failures.one_line(TypeError("bug\nmore")) == "TypeError: bug"


def test_disk_full_is_one_line_naming_the_path_and_filesystem(small_dataset, tmp_path, capfd):
  """The workdir on a 1 MiB tmpfs: the first checkpoint fills it. The console ends with one line
  naming the path and the filesystem (it ended an 833-line log with 'Event loop is closed')."""
  mount = tmp_path / "full"
  mount.mkdir()
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                             capture_output=True, text=True, check=False)
  except FileNotFoundError:
    pytest.skip("no mount command: cannot make a small filesystem to fill")
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
  try:
    console = _failed_job(tiny_config("baseline", small_dataset), mount / "job", capfd)
    assert f"ERROR failed: disk full: no space left on device writing {mount}/job/" in console[-1]
    assert f"(filesystem {mount}: 1.0 MiB, " in console[-1]
    assert sum("No space left" in l or "disk full" in l for l in console) == 1, console
    assert not any("Traceback" in l or "Event loop" in l for l in console), console
    assert _report_or_none(mount / "job") in (None, "failed")
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _report_or_none(workdir: pathlib.Path) -> str | None:
  """The report's status; ``None`` when the full disk left no room for it."""
  try:
    return _report(workdir)["status"]
  except (OSError, ValueError):
    return None


@pytest.mark.parametrize("args, line", [
    (["--config=configs/baseline.py", "--config.train.stepz=5"],
     "unknown config key 'train.stepz' (did you mean 'train.steps'?)"),
    (["--config=configs/baseline.py", "--config.trian.steps=5"],
     "unknown config key 'trian.steps' (did you mean 'train.steps'?)"),
    (["--config=configs/no_such_pipeline.py"],
     "config file not found: configs/no_such_pipeline.py"),
])
def test_config_errors_on_the_command_line_are_one_line(args, line, tmp_path):
  """An unknown config key (a 55-line traceback with a garbled 'Did you mean') and a missing
  config file (36 lines) are one line on stderr, exit status 1."""
  out = subprocess.run([sys.executable, "-m", "wmtp_jax.main", *args,
                        f"--workdir={tmp_path / 'w'}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
  assert out.returncode == failures.FAILED
  assert out.stderr.strip().splitlines() == [f"python -m wmtp_jax.main: error: {line}"]


def test_summary_lines_of_a_report():
  report = {"status": "preempted",
            "critic": {"status": "finished", "step": 4, "total_steps": 4,
                       "metrics": {"loss": 0.5, "val_loss": 0.625},
                       "best": {"metric": "val_loss", "value": 0.5, "step": 2},
                       "model": "w/critic/model"},
            "verifiable": {"status": "preempted", "step": 3, "total_steps": 8,
                           "metrics": {"loss": 1.25}, "best": None, "model": None},
            "evaluation": {"status": "finished", "base": {"pass@1": 0.0},
                           "finetuned": {"pass@1": 0.25}, "problems_file": "w/eval/p.jsonl"}}
  assert console.summary(report, pathlib.Path("w/report.json"), pathlib.Path("w/log.txt")) == [
      "critic: finished at step 4/4; final loss=0.5 val_loss=0.625; best val_loss=0.5 at step 2; "
      "model w/critic/model",
      "verifiable: preempted at step 3/8; final loss=1.25",
      "evaluation: held-out pass@1 base 0.000, finetuned 0.250",
      "report w/report.json; full log w/log.txt",
      "preempted"]
  failed = {"status": "failed", "error": "missing file: x", "baseline": {"status": "failed"}}
  assert console.summary(failed, pathlib.Path("r"), pathlib.Path("l"))[-2:] == [
      "report r; full log l", "failed: missing file: x"]
