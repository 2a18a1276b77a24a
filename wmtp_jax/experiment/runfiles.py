"""What the report reads from a run directory ``DIR/<run>/`` (``wmtp_jax.main``'s files).

* ``report.json``: the job's ``status`` (and ``error``), each phase's final ``metrics``, and a
  policy's ``evaluation`` (``wmtp_jax.eval.compare``: ``base`` and ``finetuned`` summaries);
* ``<pipeline>/metrics.jsonl``: the logged rows (learning curves, gradient norms, FLOPs);
* ``<pipeline>/eval/problems.jsonl``: per-problem evaluation results (``eval.compare``), for
  the paired bootstrap;
* ``<pipeline>/tb/events.out.tfevents.*``: the ``<pipeline>/weight_histogram`` the weighted
  runs log (tensorboard only), read with the TFRecord framing and tensorboardX's protobufs.
"""

import dataclasses
import json
import pathlib
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from wmtp_jax.eval import passk
from wmtp_jax.experiment import runner
from wmtp_jax.experiment.grid import Run

MODELS = ("base", "finetuned")


@dataclasses.dataclass
class RunFiles:
  """One run as the report sees it; ``metrics``: ``{name: value}`` (final training metrics as
  ``train/<name>``, evaluation as ``<model>/<name>``)."""
  run: Run
  status: str
  error: str
  log: pathlib.Path
  metrics: dict[str, float]
  rows: list[dict]              # metrics.jsonl of the trained phase
  problems: list[dict]          # eval/problems.jsonl rows of the fine-tuned model
  temperature: float | None     # the temperature of the fine-tuned model's pass@k
  histogram: tuple[np.ndarray, np.ndarray] | None  # (bucket upper limits [K], counts [K])


def read(run: Run, root: pathlib.Path) -> RunFiles:
  """The files of ``run`` (whatever exists: a run that did not finish has few)."""
  workdir = run.workdir(root)
  phase_dir = workdir / run.pipeline
  report = _json(workdir / runner.REPORT_FILE)
  status = runner.status(workdir)
  if status != runner.FINISHED and runner.is_locked(workdir):
    status = "running"
  metrics = {f"train/{k}": float(v) for k, v in
             report.get(run.pipeline, {}).get("metrics", {}).items() if _number(v)}
  evaluation = report.get("evaluation", {})
  for model in MODELS:
    metrics.update({f"{model}/{k}": v for k, v in _flat(evaluation.get(model, {})).items()})
  problems = [r for r in _jsonl(phase_dir / "eval" / "problems.jsonl")
              if r.get("model") == "finetuned"]
  return RunFiles(run, status, str(report.get("error", "")), workdir / "log.txt", metrics,
                  _jsonl(phase_dir / "metrics.jsonl"), problems,
                  evaluation.get("finetuned", {}).get("temperature"),
                  last_histogram(phase_dir / "tb", f"{run.pipeline}/weight_histogram"))


def problem_scores(files: RunFiles, metric: str) -> dict[str, float]:
  """``{problem_id: score}`` of the fine-tuned model: ``pass@k`` (unbiased, at the temperature
  of its summary; none for k above the samples) or ``greedy_pass@1``."""
  out = {}
  for row in files.problems:
    if metric == "greedy_pass@1":
      if "greedy_passed" in row:
        out[row["problem_id"]] = float(row["greedy_passed"])
      continue
    counts = {float(t): c for t, c in row.get("correct", {}).items()}
    k = int(metric.removeprefix("pass@"))
    if files.temperature is not None and float(files.temperature) in counts and k <= row["n"]:
      out[row["problem_id"]] = passk.pass_at_k(row["n"], counts[float(files.temperature)], k)
  return out


def last_histogram(tb_dir: pathlib.Path, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
  """``(bucket upper limits [K], counts [K])`` of the last ``tag`` histogram in the event files
  of ``tb_dir``, None without one."""
  last = None
  for path in sorted(tb_dir.glob("events.out.tfevents.*")):
    for record in _records(path.read_bytes()):
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.tag == tag and value.HasField("histo") and (
            last is None or event.step >= last[0]):
          last = (event.step, np.array(value.histo.bucket_limit), np.array(value.histo.bucket))
  return None if last is None else last[1:]


def _records(data: bytes):
  """The records of a TFRecord file: ``length (u64), crc (u32), data, crc (u32)`` each; a record
  cut short (a run killed while writing) ends the file."""
  i = 0
  while i + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[i:i + 8])
    if i + 16 + length > len(data):
      return
    yield data[i + 12:i + 12 + length]
    i += 16 + length


def _flat(tree: dict, prefix: str = "") -> dict[str, float]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    elif _number(v):
      out[prefix + k] = float(v)
  return out


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError):
    return {}


def _jsonl(path: pathlib.Path) -> list[dict]:
  if not path.is_file():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
  return rows
