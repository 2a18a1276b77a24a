"""Checkpoints of a training run with an Orbax ``CheckpointManager``.

A run directory ``WORKDIR`` holds::

    config.json                 the resolved config of the run (once a checkpoint exists, a
                                different config is an error)
    checkpoints/<step>/state    train state: params, optimizer state, step, RNG, EMA statistics …
    checkpoints/<step>/data     the Grain iterator state (one file per process; restorable in
                                another process count, see ``Checkpointer.restore``)
    checkpoints/<step>/metrics  the validation metrics used to keep the best checkpoint
    checkpoints/<step>/MANIFEST.sha256   checksums of all of the above (``integrity``), written
                                last: a step without it was not completely written

Checkpoints are written every ``every_steps`` and at the end; the last ``keep`` are kept plus the
best one by ``best_metric`` (``best_mode`` ``min`` | ``max``). Restoring uses the abstract state
with its shardings as the target, so every process reads only its shards. ``restore_latest``
resumes from the newest checkpoint that is intact: a damaged one (checksum mismatch, missing or
truncated file, unreadable metadata) is moved aside to ``checkpoints/corrupt-<step>`` with a
warning that says why, and the next older one is tried.
"""

import json
import logging
import pathlib
import re
from typing import Any

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from wmtp_jax.checkpoints import integrity, pretrained

log = logging.getLogger("wmtp_jax")
CONFIG_FILE = "config.json"


def check_run_config(workdir: pathlib.Path, config: dict[str, Any], *, ignore=("workdir",)) -> None:
  """Write ``WORKDIR/config.json``; once the run has a checkpoint, a restart needs the same config.

  A ``config.json`` without a checkpoint beside it (a start that failed before its first
  checkpoint) binds nothing: it is replaced, so the corrected command runs. Raises ``ValueError``
  naming the differing keys (before anything is compiled or overwritten).
  """
  path = workdir / CONFIG_FILE
  flat_new = _flatten(config)
  if path.exists() and _has_checkpoint(workdir):
    flat_old = _flatten(json.loads(path.read_text()))
    differ = sorted(k for k in set(flat_old) | set(flat_new)
                    if k.split(".")[0] not in ignore and flat_old.get(k) != flat_new.get(k))
    if differ:
      details = "; ".join(f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in differ[:10])
      raise ValueError(f"{path} holds a different run's config ({details}); use another --workdir "
                       f"or the same config to resume")
    return
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def _has_checkpoint(workdir: pathlib.Path) -> bool:
  """Whether ``WORKDIR/checkpoints`` holds a checkpoint (a step directory, intact or not)."""
  directory = workdir / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: json.loads(json.dumps(tree, default=str))}


class Checkpointer:
  """Save / restore ``(train state, data iterator)`` pairs under ``WORKDIR/checkpoints``."""

  def __init__(self, workdir: pathlib.Path, *, every_steps: int, keep: int,
               best_metric: str | None = None, best_mode: str = "min"):
    if best_mode not in ("min", "max"):
      raise ValueError(f"config.checkpoint.best_mode={best_mode!r}: expected 'min' or 'max'")
    preserve = [policies.LatestN(n=keep)]
    if best_metric:
      preserve.append(policies.BestN(get_metric_fn=lambda m: m[best_metric],
                                     reverse=best_mode == "min", n=1,
                                     keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every_steps,
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=False)
    self.directory = (workdir / "checkpoints").absolute()
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def save(self, step: int, state, data_iterator, *, metrics: dict[str, float] | None = None,
           force: bool = False) -> bool:
    """Save if ``step`` is due (or ``force``); returns whether a checkpoint was written."""
    import grain  # pylint: disable=import-outside-toplevel  (not needed to read params)
    saved = self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=grain.checkpoint.CheckpointSave(data_iterator)),
        metrics=metrics, force=force)
    if saved:
      self.manager.wait_until_finished()
      if jax.process_index() == 0:
        integrity.write_manifest(self.directory / str(step))
    return saved

  def restore_latest(self, abstract_state, data_iterator, *, num_indices: int):
    """``(step, state)`` from the newest intact checkpoint, or ``(None, None)`` when there is
    none. Checkpoints that fail their checksums are moved aside (one warning each, naming the
    cause); an error that is not damage (e.g. a state of another shape) is raised, never taken for
    damage; checkpoints written before manifests existed are restored unchecked."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        if not integrity.verify(self.directory / str(step), required=False):
          log.warning("%s has no %s (an older version wrote it, or the run stopped before its "
                      "checksums): restored unchecked", self.directory / str(step),
                      integrity.MANIFEST)
        return step, self.restore(step, abstract_state, data_iterator, num_indices=num_indices)
      except integrity.CorruptCheckpointError as e:  # damage only: any other error is raised
        self._set_aside(step, str(e).splitlines()[0])
    return None, None

  def _set_aside(self, step: int, cause: str) -> None:
    aside = self.directory / f"corrupt-{step}"
    log.warning("checkpoint %s is damaged (%s): moved to %s; trying the previous one",
                self.directory / str(step), cause, aside)
    if jax.process_index() == 0:
      (self.directory / str(step)).rename(aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"wmtp_jax checkpoint {step} set aside")
    self.manager.reload()

  def restore(self, step: int, abstract_state, data_iterator, *, num_indices: int):
    """The state at ``step`` laid out as ``abstract_state`` (``ShapeDtypeStruct`` with shardings);
    ``data_iterator`` is moved to the saved position in place.

    A data state saved by another number of processes is resharded for this one
    (``pipeline.reshard_state``; ``num_indices``: elements per epoch of the train pipeline), with a
    warning saying whether the resumed stream is exact.
    """
    import grain  # pylint: disable=import-outside-toplevel  (not needed to read params)
    from wmtp_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    data_dir = self.directory / str(step) / "data"
    saved = _saved_process_count(data_dir)
    if saved == jax.process_count():
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        data=grain.checkpoint.CheckpointRestore(data_iterator)))
      return restored.state
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    states = [json.loads((data_dir / f"process_{p}-of-{saved}.json").read_text())
              for p in range(saved)]
    data_state, exact = pipeline.reshard_state(states, num_indices,
                                               process_index=jax.process_index(),
                                               process_count=jax.process_count())
    data_iterator.set_state(data_state)
    log.warning("%s: data iterator state saved by %d processes, resumed in %d: resharded to "
                "global element %d (next_index=%d here); %s", data_dir, saved,
                jax.process_count(), sum(int(s["next_index"]) for s in states),
                data_state["next_index"],
                "exact (the saved processes had read exactly the elements before it)" if exact else
                "approximate (the saved shards had not read a common prefix of the global stream: "
                "records were dropped or the shards' epochs ended at different positions), so a "
                "few elements around it are read twice or skipped")
    return restored.state

  def close(self) -> None:
    self.manager.close()


def _saved_process_count(data_dir: pathlib.Path) -> int:
  """The process count of the Grain state files ``process_<i>-of-<count>.json`` in ``data_dir``."""
  counts = {int(m.group(1)) for f in data_dir.glob("process_*-of-*.json")
            if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f.name))}
  if len(counts) != 1:
    raise ValueError(f"{data_dir}: expected the data iterator state files "
                     f"process_<i>-of-<count>.json of one process count, found the counts "
                     f"{sorted(counts)}")
  return counts.pop()


def load_params(path: pathlib.Path, abstract_params, *, where: str):
  """Params laid out as ``abstract_params`` (``ShapeDtypeStruct`` with shardings) from ``path``:
  a converted checkpoint directory (``python -m wmtp_jax.convert``) or a finished training run's
  ``WORKDIR`` (its exported ``WORKDIR/model``). Each device reads only its shards.

  A ``ValueModel`` may start from a LLaMA language model: its backbone (``model/…``) is restored,
  the ``lm_head`` too where the value model has one (``value_inputs="hidden_logprob"``), else it
  is not read, and the returned tree lacks ``value_head`` (the caller initialises it). Any other
  mix of kinds (``pretrained.params_kind`` of ``abstract_params`` vs the stored ``kind``) is an
  error naming both; a main job's ``WORKDIR`` one naming the finished runs in it.
  """
  source = pretrained.resolve(path)
  if not (source / pretrained.CONFIG_FILE).is_file():
    hint = pretrained.main_job_hint(path)
    raise FileNotFoundError(f"{where}={str(path)!r} {hint}" if hint else
                            f"{where}={str(path)!r}: neither a converted checkpoint directory nor "
                            f"a finished training run (no {pretrained.CONFIG_FILE} in it or in its "
                            f"model/ subdirectory)")
  stored, wanted = pretrained.stored_kind(source), pretrained.params_kind(abstract_params)
  if stored != wanted and (stored, wanted) != ("llama", "value"):
    raise ValueError(f"{where}={str(path)!r} holds {pretrained.KIND_NAMES[stored]} (kind "
                     f"{stored!r} in {source / pretrained.CONFIG_FILE}), but "
                     f"{pretrained.KIND_NAMES[wanted]} (kind {wanted!r}) is expected here")
  stored_top = {p[0] for p in pretrained.stored_shapes(source)}
  target, unused = dict(abstract_params), ()
  if "value_head" in target and "value_head" not in stored_top:  # a value model from an LLaMA LM
    del target["value_head"]
    unused = () if "lm_head" in target else ("lm_head",)
  return pretrained.restore_params(source, target, unused=unused)
