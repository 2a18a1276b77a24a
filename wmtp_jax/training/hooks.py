"""Hooks of the train loop: work that runs between train steps every so many steps (the held-out
pass@1 of ``wmtp_jax.eval.interval``), given to ``loop.run(…, hooks=…)`` by its caller so that
the loop depends on nothing it does."""

import dataclasses
from collections.abc import Callable

from wmtp_jax.data import run_data
from wmtp_jax.training.state import Frozen, StepContext, TrainState


@dataclasses.dataclass(frozen=True)
class StepView:
  """What a hook sees after train step ``step``, to read only: ``state`` is valid until the hook
  returns (the next step donates it). ``training.state.merged_params(view.context, view.state,
  view.frozen)`` gives the trained model's params with the LoRA adapters folded in."""
  step: int
  state: TrainState
  frozen: Frozen
  context: StepContext
  data: run_data.RunData


@dataclasses.dataclass(frozen=True)
class Hook:
  """``fn(view) -> metrics`` after every ``every_steps``-th train step (0: never) and, with
  ``at_end``, after the last one, before the checkpoint of that step. The loop logs the metrics at
  the step, with the hook's duration as ``time/<name>_s`` (outside the step time)."""
  name: str
  every_steps: int
  fn: Callable[[StepView], dict[str, float]]
  at_end: bool = False

  def due(self, step: int, total_steps: int | None = None) -> bool:
    return ((bool(self.every_steps) and step % self.every_steps == 0)
            or (self.at_end and step == total_steps))
