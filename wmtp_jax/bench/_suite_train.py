"""The device suite's train steps: a run config (``_configs``) built into its objective, state and
jitted step (``training.state`` / ``training.step``), compiled at a batch size (or at the largest
one that fits, found by compiling), timed by ``bench.step.step_seconds`` and reported with
tokens/s, MFU, memory and compile time."""

import time

import flax.linen as nn
import jax

from wmtp_jax import objectives
from wmtp_jax.bench import _suite_device, step as step_bench
from wmtp_jax.training import flops, mesh as mesh_lib, state as state_lib, step as step_lib

GIB = _suite_device.GIB
MAX_COMPILES = 3  # of the batch search (batch 1, the estimate, one refinement)
SEARCH_SHARE = 0.7  # the search stops compiling once this share of the part's cap is spent


def _needed_bytes(memory_mib: dict[str, float]) -> float:
  """Device bytes a compiled step needs: arguments + outputs − aliased outputs + temporaries."""
  return 2**20 * (memory_mib["memory/argument_mib"] + memory_mib["memory/output_mib"]
                  - memory_mib["memory/alias_mib"] + memory_mib["memory/temp_mib"])


class StepSetup:
  """The objective, fresh state and frozen params of ``config``, and its step compiled per batch
  size (``compile``) on random rows of ``seq`` tokens."""

  def __init__(self, config, seq: int):
    self.config, self.seq = config, seq
    self.objective = objectives.build(config)
    self.mesh = mesh_lib.make_mesh(config.mesh.shape)
    self.rules = mesh_lib.param_rules(config.mesh)
    self.state, self.frozen, self.context, _ = state_lib.build_state(
        config, self.objective, self.mesh, self.rules, total_steps=1000)

  def compile(self, rows: int) -> dict:
    """``{"rows", "step", "batch", "memory" (MiB, step_lib.memory_mib), "need" (bytes or None),
    "compile_s"}`` of the step on ``rows`` random rows (``bench.step.host_batch``)."""
    batch = jax.device_put(step_bench.host_batch(self.config, rows, self.seq),
                           self.context.batch_sharding)
    start = time.perf_counter()
    step_fn, _, memory = step_lib.compile_steps(self.context, self.config, self.state,
                                                self.frozen, batch)
    return {"rows": rows, "step": step_fn, "batch": batch, "memory": memory,
            "need": _needed_bytes(memory) if memory else None,
            "compile_s": time.perf_counter() - start}


def largest_batch(setup: StepSetup, capacity: float, *, max_batch: int, budget,
                  log: list) -> dict:
  """The compiled step (``StepSetup.compile``) of the largest batch up to ``max_batch`` whose
  compiled memory fits ``capacity`` bytes, searched by compiling: batch 1; then the batch its
  memory predicts (the rest of ``capacity`` over its temporaries, which hold the per-row
  activations); then one refined by the line through the two (at most ``MAX_COMPILES``, while
  less than ``SEARCH_SHARE`` of the part's time is spent). Each compile is appended to ``log``."""
  def attempt(rows: int) -> tuple[dict, bool]:
    compiled = setup.compile(rows)
    fits = compiled["need"] is not None and compiled["need"] <= capacity
    log.append({"batch": rows, "need_gib": None if compiled["need"] is None else
                compiled["need"] / GIB, "fits": fits, "compile_s": compiled["compile_s"]})
    return compiled, fits

  first, fits = attempt(1)
  if first["need"] is None:
    raise RuntimeError("the backend has no compiled memory analysis to search the batch size by")
  if not fits:
    raise RuntimeError(f"the step does not fit at batch 1: it needs {log[0]['need_gib']:.1f} GiB "
                       f"of the {capacity / GIB:.1f} GiB planned")
  best, too_large = first, max_batch + 1
  per_row = 2**20 * first["memory"]["memory/temp_mib"]
  guess = min(max_batch, int((capacity - first["need"]) // max(per_row, 1.0)) + 1)
  while (len(log) < MAX_COMPILES and best["rows"] < guess < too_large
         and budget.spent_share() < SEARCH_SHARE):
    compiled, fits = attempt(guess)
    if fits:
      best = compiled
    else:
      too_large = guess
    per_row = (compiled["need"] - first["need"]) / (guess - 1)
    guess = max_batch if per_row <= 0 else min(
        max_batch, int((capacity - first["need"]) // per_row) + 1)
    guess = min(guess, too_large - 1)
  return best


def measure(budget, out: dict, *, config, seq: int, rows: int, repeats: int, peak: dict,
            capacity: tuple[float, str] | None = None) -> None:
  """Build, compile and time the train step of ``config`` at ``rows`` × ``seq`` tokens (or, with
  ``capacity`` = ``(bytes, source)``, at the largest batch up to ``rows`` that fits,
  ``largest_batch``); MFU against ``peak["used_flops"]`` and ``peak["measured_flops"]`` (None
  where a peak is None: the peak part did not run)."""
  setup = StepSetup(config, seq)
  params = state_lib.full_params(setup.state.trainable, setup.frozen.base)
  out.update(pipeline=config.pipeline, seq_len=seq, dtype=setup.objective.model.cfg.dtype,
             policy_params=sum(x.size for x in jax.tree_util.tree_leaves(params)),
             trainable_params=sum(x.size for x in jax.tree_util.tree_leaves(setup.state.trainable)),
             lora=bool(config.lora.enabled), memory_efficient_loss=config.loss.memory_efficient,
             frozen_models=sorted(setup.objective.frozen_models))
  del params
  budget.check("building the state")
  if capacity is None:
    compiled = setup.compile(rows)
  else:
    out.update(batch_search=[], memory_capacity_gib=capacity[0] / GIB,
               memory_capacity_source=capacity[1], max_batch=rows)
    compiled = largest_batch(setup, capacity[0], max_batch=rows, budget=budget,
                             log=out["batch_search"])
  out.update(batch=compiled["rows"], compile_s=compiled["compile_s"],
             compiled_memory_mib=compiled["memory"],
             compiled_need_gib=None if compiled["need"] is None else compiled["need"] / GIB)
  budget.check("compiling")
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    step_s, setup.state = step_bench.step_seconds(compiled["step"], setup.state, setup.frozen,
                                                  compiled["batch"], repeats)
  tokens = compiled["rows"] * seq
  mfu = lambda per_device: None if per_device is None else flops.mfu(
      setup.objective, compiled["rows"], seq, step_s, per_device * jax.device_count())
  out.update(step_s=step_s, tokens_per_s=tokens / step_s,
             step_tflop=flops.train_flops_per_token(setup.objective, seq) * tokens / 1e12,
             mfu=mfu(peak["used_flops"]), mfu_vs_measured_peak=mfu(peak["measured_flops"]),
             **_suite_device.peak_memory_gib(compiled["need"]))
