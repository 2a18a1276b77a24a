"""The one train loop, shared by every pipeline; pipelines differ only in their ``Objective``.

Phases of ``train(config, workdir)`` (``run``: its final metrics):
  1. set-up: objective, mesh + logical rules, run-config check, data;
  2. abstract-first init (``training.state.build_state``): ``eval_shape`` → shardings from the
     rules → ``jit(init, out_shardings)`` (or a pretrained / another run's checkpoint restored into
     those shardings); split into trainable and frozen parameters; LoRA adapters; optimizer state
     for the trainable part only;
  3. restore the newest intact checkpoint of ``workdir`` if there is one (exact resume;
     ``Checkpointer.restore_latest`` sets damaged ones aside); a finished run, started again,
     returns what it returned when it finished, read back from its ``metrics.jsonl``;
  4. compile the step (donated state) and report its memory per device (log and metrics.jsonl);
  5. loop: batch → step → (one step later) metrics → validation → the caller's hooks (e.g.
     held-out pass@1, ``eval.interval``) → checkpoint; SIGTERM or SIGINT (Ctrl-C) saves a
     checkpoint at the step boundary and raises ``Preempted`` (a second Ctrl-C interrupts at
     once); too many non-finite steps in a row stop the run with an error.

The host does not wait for the device at every step: it dispatches step t+1, then fetches and
logs the metrics of step t (and checks its non-finite streak), then prepares batch t+2 while the
device runs step t+1. Validation, hooks and checkpoints read the state of the step just
dispatched: before them the host waits for that step and checks its streak, so no checkpoint is
ever written of a state whose streak reached ``config.train.max_nonfinite_streak``. They pause the
step clock (``_StepClock``): ``step_time_s``, ``tokens_per_s`` and ``mfu`` are those of the steps
alone, and their own durations are logged as ``time/validation_s``, ``time/<hook name>_s`` and
``time/checkpoint_s``.

Every row the loop writes carries ``flops/train_cumulative`` (``flops.CUMULATIVE``): the train
FLOPs of the steps so far, carried across resumes (read back at the checkpoint's step).
``config.budget.flops`` > 0 sets the step count instead of ``train.steps`` (``run_steps``).
"""

import dataclasses
import itertools
import logging
import math
import pathlib
import signal
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils

from wmtp_jax.checkpoints import checkpointer as checkpointing, pretrained
from wmtp_jax.training import flops, mesh as mesh_lib, metrics_log
from wmtp_jax.training.hooks import Hook, StepView
from wmtp_jax.training.state import build_state, export_model
from wmtp_jax.training.step import compile_steps
from wmtp_jax import objectives
from wmtp_jax.data import run_data

log = logging.getLogger("wmtp_jax")
BUDGET_SAMPLE_BATCHES = 64  # batches whose mean cost turns config.budget.flops into steps


def _abstract_like(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


@dataclasses.dataclass(frozen=True)
class Outcome:
  """How a phase ended: ``status`` ``"finished"`` or ``"preempted"`` at ``step`` of
  ``total_steps``, with its final ``metrics`` (what ``run`` returns), the ``best`` logged value of
  ``config.checkpoint.best_metric`` (``metrics_log.best``: ``{"metric", "value", "step"}``) and,
  once finished, the exported ``model`` directory. Read from ``metrics.jsonl``, which process 0
  writes: ``best`` is ``None`` on the other processes."""
  status: str
  step: int
  total_steps: int
  metrics: dict[str, float]
  best: dict | None
  model: str | None


class Preempted(Exception):
  """SIGTERM or SIGINT stopped ``phase`` after the checkpoint of ``outcome.step``: the job stops
  (``wmtp_jax.main`` exits with ``failures.PREEMPTED``) and the same command resumes it."""

  def __init__(self, phase: str, signal_name: str, outcome: Outcome):
    super().__init__(f"{phase}: {signal_name} stopped it after step {outcome.step} of "
                     f"{outcome.total_steps}")
    self.phase, self.signal_name, self.outcome = phase, signal_name, outcome


class _Preemption:
  """SIGTERM or SIGINT sets a flag (``signal``: its name); the loop saves a checkpoint at the next
  step boundary and stops. A second SIGINT interrupts at once (``KeyboardInterrupt``)."""

  def __init__(self):
    self.signal: str | None = None
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signal is not None:
      raise KeyboardInterrupt
    self.signal = signal.Signals(signum).name

  def restore(self):
    for signum, handler in self._previous.items():
      if handler is not None:
        signal.signal(signum, handler)


class _StepClock:
  """Seconds per train step, less the pauses between steps (validation, hooks, checkpoints), as
  big_vision's ``chrono.pause``. The host sees a step end when it fetches the step's metrics: a
  step's time runs from the previous fetch (or the first dispatch) to its own, less the pauses in
  between. The loop waits for the step before pausing, so the step's device time counts."""

  def __init__(self):
    self._mark: float | None = None
    self._paused = 0.0

  def start(self) -> None:
    if self._mark is None:
      self._mark = time.perf_counter()

  def lap(self) -> float:
    """Seconds of the step whose metrics were just fetched."""
    now = time.perf_counter()
    seconds = now - self._mark - self._paused
    self._mark, self._paused = now, 0.0
    return seconds

  def paused(self, fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``, the seconds left out of the step time."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    self._paused += seconds
    return result, seconds


@dataclasses.dataclass(frozen=True)
class _Pending:
  """A dispatched train step whose metrics (device arrays) the host has not read yet."""
  step: int
  metrics: dict
  rows: int      # rows of its batch (pos + neg rows for pairs)
  seq_len: int
  flops: float   # cumulative train FLOPs after this step

  def check_finite(self, config) -> None:
    """Wait for the step; raise if its non-finite streak reached the limit."""
    _check_nonfinite(self.step, int(self.metrics["nonfinite_streak"]), config)


def run(config, workdir: str | pathlib.Path, *, phase: str | None = None,
        hooks: Sequence[Hook] = ()) -> dict[str, float]:
  """The final metrics of ``train(config, workdir, phase=phase, hooks=hooks)``."""
  return train(config, workdir, phase=phase, hooks=hooks).metrics


def train(config, workdir: str | pathlib.Path, *, phase: str | None = None,
          hooks: Sequence[Hook] = ()) -> Outcome:
  """Train ``config`` in ``workdir`` (resuming if it holds a checkpoint), running ``hooks`` after
  the steps where they are due; returns how it finished. ``phase`` (default: the pipeline)
  prefixes the tensorboard tags. Raises ``Preempted`` when SIGTERM or SIGINT stopped it."""
  workdir = pathlib.Path(workdir)
  phase = phase or config.pipeline
  # 1. Set-up.
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  checkpointing.check_run_config(workdir, config.to_dict())
  data = run_data.build(config, objective, workdir)
  total_steps = run_steps(config, data, objective)

  # 2. Abstract-first init.
  state, frozen, context, schedules = build_state(config, objective, mesh, rules, total_steps)
  checkpointer = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
      best_metric=config.checkpoint.best_metric or None, best_mode=config.checkpoint.best_mode)

  # 3. Resume.
  iterator = iter(data.train)
  start, restored = checkpointer.restore_latest(_abstract_like(state), iterator,
                                                num_indices=data.examples_per_epoch)
  if start is not None:
    state = restored
    log.info("resumed %s from step %d", workdir, start)
  start = int(start or 0)
  outcome = lambda status, step, metrics: _outcome(status, config, workdir, step, total_steps,
                                                   metrics)
  if start >= total_steps:  # finished before: export if that was cut short, report again
    try:
      export_model(context, state, frozen, workdir / pretrained.RUN_EXPORT_DIR, data.tokenizer)
    finally:
      checkpointer.close()
    log.info("%s: finished before, at step %d; its final metrics are read back", workdir, start)
    return outcome("finished", start, metrics_log.final_metrics(workdir, start))

  # 4. Compile.
  to_device = lambda b: data.to_global(b, context.batch_sharding)
  first = to_device(next(iterator))
  step_fn, eval_fn, memory = compile_steps(context, config, state, frozen, first)
  logger = metrics_log.MetricsLogger(workdir, phase=phase, total_steps=total_steps,
                                     start_step=start)
  if memory:
    logger.write(start, memory)
  cumulative = _resumed_flops(workdir, start)  # the logger dropped the rows after start
  peak = flops.peak_flops(config.train.peak_flops, objective.model.cfg.dtype)
  preemption = _Preemption()

  # 5. Loop.
  clock = _StepClock()
  log_step = lambda pending, **kw: _log(logger, pending, clock, schedules, objective, peak, config,
                                        **kw)
  pending = None
  last: dict[str, float] = {}
  batch = first
  step = start
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      while step < total_steps:
        clock.start()
        state, metrics = step_fn(state, frozen, batch)
        step += 1
        if pending is not None:  # the previous step's metrics, fetched while this one runs
          last = log_step(pending)
        shape = _tokens_shape(batch)
        cumulative += flops.step_flops(objective, *shape)
        pending = _Pending(step, metrics, *shape, cumulative)
        counted = {flops.CUMULATIVE: cumulative}
        stop = preemption.signal  # read once: the checkpoint and the stop agree
        force = step == total_steps or stop is not None
        val = None
        if config.train.eval_every and (step % config.train.eval_every == 0 or step == total_steps):
          pending.check_finite(config)
          val, seconds = clock.paused(_validate, eval_fn, context, state, frozen, data)
          logger.write(step, {**val, "time/validation_s": seconds, **counted})
          last.update(val)
        for hook in hooks:
          if hook.due(step, total_steps):
            pending.check_finite(config)
            values, seconds = clock.paused(hook.fn, StepView(step, state, frozen, context, data))
            logger.write(step, {**values, f"time/{hook.name}_s": seconds, **counted})
            last.update(values)
        saved = False
        if force or checkpointer.manager.should_save(step):
          pending.check_finite(config)
          # The iterator has yielded exactly the batches of steps 1 … step: save before prefetching.
          saved, seconds = clock.paused(checkpointer.save, step, state, iterator, metrics=val,
                                        force=force)
          if saved:
            logger.write(step, {"time/checkpoint_s": seconds, **counted})
        if stop:
          log.warning("%s: checkpoint at step %d %s; stopping", stop, step,
                      "written" if saved else "not written")
          break
        if step < total_steps:
          batch = to_device(next(iterator))
      if pending is not None:
        last.update(log_step(pending, final=True))
    if step == total_steps:
      export_model(context, state, frozen, workdir / pretrained.RUN_EXPORT_DIR, data.tokenizer)
  finally:
    preemption.restore()
    checkpointer.close()
    logger.close()
  if step < total_steps:
    raise Preempted(phase, preemption.signal, outcome("preempted", step, last))
  return outcome("finished", step, last)


def _outcome(status: str, config, workdir: pathlib.Path, step: int, total_steps: int,
             metrics: dict[str, float]) -> Outcome:
  best_metric = config.checkpoint.best_metric
  best = (metrics_log.best(workdir, best_metric, config.checkpoint.best_mode) if best_metric
          else None)
  model = str(workdir / pretrained.RUN_EXPORT_DIR) if status == "finished" else None
  return Outcome(status, step, total_steps, metrics, best, model)


def run_steps(config, data: run_data.RunData, objective) -> int:
  """``config.train.steps``; with ``config.train.epochs`` > 0 the steps of that many epochs; with
  ``config.budget.flops`` > 0 the steps that spend that budget (``flops.budget_steps`` over the
  first ``BUDGET_SAMPLE_BATCHES`` batches, process 0's count)."""
  if config.budget.flops > 0:
    if config.train.epochs > 0:
      raise ValueError(f"config.budget.flops={config.budget.flops} and config.train.epochs="
                       f"{config.train.epochs} both set the steps: set one of them")
    steps = flops.budget_steps(config.budget.flops, objective, mean_step_shapes(data))
    return int(multihost_utils.broadcast_one_to_all(steps))
  if config.train.epochs <= 0:
    return config.train.steps
  return max(1, math.ceil(config.train.epochs * data.examples_per_epoch / config.data.batch_size))


def mean_step_shapes(data: run_data.RunData) -> list[tuple[int, int]]:
  """``(rows, S)`` of the first ``BUDGET_SAMPLE_BATCHES`` train batches (all processes' rows)."""
  batches = itertools.islice(iter(data.train), BUDGET_SAMPLE_BATCHES)
  return [(rows * jax.process_count(), seq_len)
          for rows, seq_len in map(_tokens_shape, batches)]


def _resumed_flops(workdir: pathlib.Path, start: int) -> float:
  """The cumulative train FLOPs logged at step ``start`` (0 for a fresh run). Without that row (a
  kill between the checkpoint and its row) the last logged value, scaled to ``start`` steps."""
  last = metrics_log.best(workdir, flops.CUMULATIVE, "max") if start else None
  if last is None or last["step"] == start:
    return last["value"] if last else 0.0
  log.warning("%s: no %s logged at step %d; estimated from step %d", workdir, flops.CUMULATIVE,
              start, last["step"])
  return last["value"] * start / last["step"]


def _check_nonfinite(step: int, streak: int, config) -> None:
  if streak >= config.train.max_nonfinite_streak:
    raise FloatingPointError(f"step {step}: {streak} steps in a row had a non-finite loss or "
                             f"gradient (config.train.max_nonfinite_streak="
                             f"{config.train.max_nonfinite_streak}); the last checkpoint is kept")


def _tokens_shape(batch) -> tuple[int, int]:
  """``(rows, S)`` of the step batch (pos + neg rows for pairs)."""
  if "tokens" in batch:
    return batch["tokens"].shape
  b, s = batch["pos_tokens"].shape
  return 2 * b, s


def _log(logger, pending: _Pending, clock: _StepClock, schedules, objective, peak, config, *,
         final=False) -> dict[str, float]:
  """Fetch the metrics of ``pending`` (waiting for its step), add its time, throughput, MFU and
  learning rates, write them every ``log_every`` steps (and at the first and ``final`` one), then
  check its non-finite streak."""
  step, rows, seq_len = pending.step, pending.rows, pending.seq_len
  scalars, histograms = metrics_log.split_histograms(jax.device_get(pending.metrics))
  step_time = clock.lap()
  values = metrics_log.flatten(scalars)
  values["step_time_s"] = step_time
  values["tokens_per_s"] = rows * seq_len / step_time
  values["mfu"] = flops.mfu(objective, rows, seq_len, step_time, peak)
  values[flops.CUMULATIVE] = pending.flops
  for name, schedule in schedules.items():
    values[f"lr/{name}"] = float(schedule(step - 1))
  if final or step % config.train.log_every == 0 or step == 1:
    logger.write(step, values, histograms)
    logger.progress(step, values)
  _check_nonfinite(step, int(scalars["nonfinite_streak"]), config)
  return values


def _validate(eval_fn, context, state, frozen, data) -> dict[str, float]:
  """``{"val_<metric>": mean over the validation batches}`` of ``state``."""
  totals: dict[str, float] = {}
  n = 0
  for batch in data.validation():
    metrics, _ = metrics_log.split_histograms(jax.device_get(eval_fn(
        state, frozen, data.to_global(batch, context.batch_sharding))))
    metrics = metrics_log.flatten(metrics)
    for k, v in metrics.items():
      totals[k] = totals.get(k, 0.0) + v
    n += 1
  return {f"val_{k}": v / max(n, 1) for k, v in totals.items()}
