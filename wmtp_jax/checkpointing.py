"""Checkpoints of a training run with an Orbax ``CheckpointManager``.

A run directory ``WORKDIR`` holds::

    config.json                 the resolved config of the run (a different config is an error)
    checkpoints/<step>/state    train state: params, optimizer state, step, RNG, EMA statistics …
    checkpoints/<step>/data     the Grain iterator state (one file per process)
    checkpoints/<step>/metrics  the validation metrics used to keep the best checkpoint

Checkpoints are written every ``every_steps`` and at the end; the last ``keep`` are kept plus the
best one by ``best_metric`` (``best_mode`` ``min`` | ``max``). Restoring uses the abstract state
with its shardings as the target, so every process reads only its shards.
"""

import json
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from wmtp_jax import pretrained

CONFIG_FILE = "config.json"


def check_run_config(workdir: pathlib.Path, config: dict[str, Any], *, ignore=("workdir",)) -> None:
  """Write ``WORKDIR/config.json`` on the first run; on a restart, the same config is required.

  Raises ``ValueError`` naming the differing keys (before anything is compiled or overwritten).
  """
  path = workdir / CONFIG_FILE
  flat_new = _flatten(config)
  if path.exists():
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
        save_interval_steps=every_steps, preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=False)
    self.directory = (workdir / "checkpoints").absolute()
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, *, metrics: dict[str, float] | None = None,
           force: bool = False) -> bool:
    """Save if ``step`` is due (or ``force``); returns whether a checkpoint was written."""
    saved = self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      data=grain.checkpoint.CheckpointSave(data_iterator)),
        metrics=metrics, force=force)
    if saved:
      self.manager.wait_until_finished()
    return saved

  def restore(self, step: int, abstract_state, data_iterator):
    """The state at ``step`` laid out as ``abstract_state`` (``ShapeDtypeStruct`` with shardings);
    ``data_iterator`` is moved to the saved position in place."""
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored.state

  def close(self) -> None:
    self.manager.close()


def load_params(path: pathlib.Path, abstract_params, *, where: str):
  """Params laid out as ``abstract_params`` (``ShapeDtypeStruct`` with shardings) from ``path``:
  a converted checkpoint directory (``python -m wmtp_jax.convert``) or a finished training run's
  ``WORKDIR`` (its exported ``WORKDIR/model``). Each device reads only its shards.

  A ``ValueModel`` may start from a LLaMA language model: its backbone (``model/…``) is restored,
  the ``lm_head`` is not read, and the returned tree lacks ``value_head`` (the caller initialises it).
  """
  source = pretrained.resolve(path)
  if not (source / pretrained.CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{where}={str(path)!r}: neither a converted checkpoint directory nor "
                            f"a finished training run (no {pretrained.CONFIG_FILE} in it or in its "
                            f"model/ subdirectory)")
  stored_top = {p[0] for p in pretrained.stored_shapes(source)}
  target, unused = dict(abstract_params), ()
  if "value_head" in target and "value_head" not in stored_top:  # a value model from an LLaMA LM
    del target["value_head"]
    unused = ("lm_head",)
  return pretrained.restore_params(source, target, unused=unused)
