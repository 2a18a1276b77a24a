"""The train step and the validation step, and their compilation.

The step: the global batch is split into ``grad_accum`` micro-batches, whose losses are defined to
*sum* to the loss of the whole batch (the objective's ``normalizers``); gradients are accumulated
in fp32, then ``objective.finish_step`` may rescale the whole step (weights renormalised to mean 1
over the step batch), clipped, and applied by AdamW unless the loss or a gradient is non-finite,
in which case the update is skipped and counted.
"""

import functools
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wmtp_jax.training import lora, mesh as mesh_lib
from wmtp_jax.training.state import Frozen, StepContext, TrainState, full_params

log = logging.getLogger("wmtp_jax")


def model_apply(context: StepContext, lora_params, rng):
  """``apply(params, *args, **kw)`` of the trained model with the LoRA adapters (if any) added."""
  model = context.objective.model

  def apply(params, *args, **kwargs):
    if context.lora_cfg is None:
      return model.apply({"params": params}, *args, **kwargs)
    with lora.applied(lora_params, context.lora_cfg, rng=rng):
      return model.apply({"params": params}, *args, **kwargs)
  return apply


def _micro_batches(batch, n: int):
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"global batch size {x.shape[0]} is not divisible by "
                       f"config.train.grad_accum={n}")
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


def loss_and_grads(context: StepContext, state: TrainState, frozen: Frozen, batch,
                   grad_accum: int, *, train: bool = True):
  """Summed loss, fp32 gradients, micro-batch-averaged metrics and summed aux statistics."""
  objective = context.objective
  norms = objective.normalizers(batch)
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def micro_loss(trainable, micro, rng):
    apply = model_apply(context, trainable["lora"], rng if train else None)
    return objective.loss(full_params(trainable, frozen.base), apply, frozen.models, micro, norms,
                          state.aux, rng)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def body(carry, xs):
    micro, i = xs
    (loss, (metrics, sums)), grads = grad_fn(state.trainable, micro, jax.random.fold_in(key, i))
    grads = jax.tree_util.tree_map(lambda g: g.astype(jnp.float32), grads)
    if carry is None:
      return (loss, grads, metrics, sums), None
    return jax.tree_util.tree_map(jnp.add, carry, (loss, grads, metrics, sums)), None

  micro = _micro_batches(batch, grad_accum)
  carry, _ = body(None, (jax.tree_util.tree_map(lambda x: x[0], micro), 0))
  if grad_accum > 1:
    rest = jax.tree_util.tree_map(lambda x: x[1:], micro)
    carry, _ = jax.lax.scan(body, carry, (rest, jnp.arange(1, grad_accum)))
  loss, grads, metrics, sums = carry
  metrics = jax.tree_util.tree_map(lambda m: m / grad_accum, metrics)
  loss, grads, metrics = objective.finish_step(loss, grads, metrics, sums)
  return loss, grads, metrics, sums


def train_step(context: StepContext, grad_accum: int, state: TrainState, frozen: Frozen, batch, *,
               grad_clip: float | None = None):
  """One optimizer step (jitted with the state donated).

  ``grad_clip``: the optimizer's global-norm clip (``config.optim.grad_clip``); when given, the
  metrics hold ``grad_norm_clipped``, the norm of the gradient after clipping, ``min(norm, clip)``
  (``optax.clip_by_global_norm`` scales by ``clip / max(norm, clip)``).
  """
  loss, grads, metrics, sums = loss_and_grads(context, state, frozen, batch, grad_accum)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply_update(state):
    updates, opt_state = context.tx.update(grads, state.opt_state, state.trainable)
    return state.replace(trainable=optax.apply_updates(state.trainable, updates),
                         opt_state=opt_state, aux=context.objective.update_aux(state.aux, sums),
                         bad_streak=jnp.zeros_like(state.bad_streak))

  def skip(state):
    return state.replace(skipped=state.skipped + 1, bad_streak=state.bad_streak + 1)

  new_state = jax.lax.cond(finite, apply_update, skip, state)
  new_state = new_state.replace(step=state.step + 1)
  metrics = {**metrics, "step_loss": loss, "grad_norm": grad_norm,
             "skipped_steps": new_state.skipped, "nonfinite_streak": new_state.bad_streak}
  if grad_clip is not None:
    metrics["grad_norm_clipped"] = jnp.minimum(grad_norm, grad_clip)
  return new_state, metrics


def eval_step(context: StepContext, state: TrainState, frozen: Frozen, batch):
  """Validation metrics of one batch (no update, no dropout)."""
  _, _, metrics, _ = loss_and_grads(context, state, frozen, batch, 1, train=False)
  return metrics


def compile_steps(context: StepContext, config, state: TrainState, frozen: Frozen, batch):
  """``(train step, eval step, memory)``: ``step(state, frozen, batch) -> (state, metrics)``
  jitted with the state donated (it keeps its shardings across steps), ``evaluate(state, frozen,
  batch) -> metrics``, and the compiled memory per device of the train step in MiB (``{}`` if the
  backend has none). The context is bound, static; the arrays are arguments."""
  replicated = mesh_lib.replicated(context.mesh)
  step = jax.jit(functools.partial(train_step, context, config.train.grad_accum,
                                   grad_clip=config.optim.grad_clip), donate_argnums=0,
                 out_shardings=(jax.tree_util.tree_map(lambda x: x.sharding, state), replicated))
  evaluate = jax.jit(functools.partial(eval_step, context))
  with jax.set_mesh(context.mesh), nn.logical_axis_rules(context.rules):
    compiled = step.lower(state, frozen, batch).compile()
  memory = memory_mib(compiled)
  if memory:
    log.info("train step memory per device (MiB): %s",
             " ".join(f"{k}={v:.1f}" for k, v in memory.items()))
  return step, evaluate, memory


def memory_mib(compiled) -> dict[str, float]:
  """``memory_analysis`` of a compiled function per device, in MiB, as
  ``{"memory/argument_mib", "memory/temp_mib", "memory/output_mib", "memory/alias_mib"}``."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  return {f"memory/{name}_mib": getattr(analysis, f"{name}_size_in_bytes") / 2**20
          for name in ("argument", "temp", "output", "alias")}
