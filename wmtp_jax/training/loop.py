"""The one train loop, shared by every pipeline; pipelines differ only in their ``Objective``.

Phases of ``run(config, workdir)``:
  1. set-up: objective, mesh + logical rules, run-config check, data;
  2. abstract-first init: ``eval_shape`` → shardings from the rules → ``jit(init, out_shardings)``
     (or a pretrained / another run's checkpoint restored into those shardings); split into
     trainable and frozen parameters; LoRA adapters; optimizer state for the trainable part only;
  3. restore the latest checkpoint of ``workdir`` if there is one (exact resume);
  4. compile the step (donated state) and report its memory per device (log and metrics.jsonl);
  5. loop: batch → step → (one step later) metrics → validation → held-out pass@1 every
     ``config.evaluate.every_steps`` (``eval.interval``) → checkpoint; SIGTERM saves and stops;
     too many non-finite steps in a row stop the run with an error.

The step: the global batch is split into ``grad_accum`` micro-batches, whose losses are defined to
*sum* to the loss of the whole batch (the objective's ``normalizers``); gradients are accumulated
in fp32, clipped, and applied by AdamW unless the loss or a gradient is non-finite, in which case
the update is skipped and counted.
"""

import dataclasses
import functools
import logging
import math
import pathlib
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wmtp_jax.checkpoints import checkpointer as checkpointing, pretrained
from wmtp_jax.training import flops, lora, mesh as mesh_lib, metrics_log, optim
from wmtp_jax import objectives
from wmtp_jax.data import run_data
from wmtp_jax.eval import interval

log = logging.getLogger("wmtp_jax")


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the data iterator.

  ``trainable = {"params": trainable base params, "lora": adapters (or {})}``; ``rng`` is raw key
  data (``uint32``) so that it checkpoints as a plain array.
  """
  step: jax.Array
  trainable: Any
  opt_state: Any
  aux: Any
  rng: jax.Array
  skipped: jax.Array      # total steps skipped for a non-finite loss or gradient
  bad_streak: jax.Array   # consecutive non-finite steps


@dataclasses.dataclass
class Setup:
  """What the step needs besides the state: the model, the frozen parameters and the optimizer."""
  objective: objectives.Objective
  lora_cfg: lora.LoRAConfig | None
  tx: optax.GradientTransformation
  frozen_base: Any          # base params of the trained model that do not train (LoRA, freezing)
  frozen_models: dict       # params of frozen critic / reference models
  mesh: jax.sharding.Mesh
  rules: mesh_lib.Rules
  batch_sharding: jax.sharding.NamedSharding


# ----------------------------------------------------------------------------------------------
# The step.


def full_params(trainable, frozen_base):
  return optim.combine(trainable["params"], frozen_base)


def model_apply(setup: Setup, lora_params, rng):
  """``apply(params, *args, **kw)`` of the trained model with the LoRA adapters (if any) added."""
  model = setup.objective.model

  def apply(params, *args, **kwargs):
    if setup.lora_cfg is None:
      return model.apply({"params": params}, *args, **kwargs)
    with lora.applied(lora_params, setup.lora_cfg, rng=rng):
      return model.apply({"params": params}, *args, **kwargs)
  return apply


def _micro_batches(batch, n: int):
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"global batch size {x.shape[0]} is not divisible by "
                       f"config.train.grad_accum={n}")
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree_util.tree_map(split, batch)


def loss_and_grads(setup: Setup, state: TrainState, frozen_base, frozen_models, batch,
                   grad_accum: int, *, train: bool = True):
  """Summed loss, fp32 gradients, micro-batch-averaged metrics and summed aux statistics."""
  objective = setup.objective
  norms = objective.normalizers(batch)
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def micro_loss(trainable, micro, rng):
    apply = model_apply(setup, trainable["lora"], rng if train else None)
    return objective.loss(full_params(trainable, frozen_base), apply, frozen_models, micro, norms,
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
  return loss, grads, metrics, sums


def train_step(setup: Setup, grad_accum: int, state: TrainState, frozen_base, frozen_models, batch):
  """One optimizer step (jitted with the state donated)."""
  loss, grads, metrics, sums = loss_and_grads(setup, state, frozen_base, frozen_models, batch,
                                              grad_accum)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply_update(state):
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.trainable)
    return state.replace(trainable=optax.apply_updates(state.trainable, updates),
                         opt_state=opt_state, aux=setup.objective.update_aux(state.aux, sums),
                         bad_streak=jnp.zeros_like(state.bad_streak))

  def skip(state):
    return state.replace(skipped=state.skipped + 1, bad_streak=state.bad_streak + 1)

  new_state = jax.lax.cond(finite, apply_update, skip, state)
  new_state = new_state.replace(step=state.step + 1)
  metrics = {**metrics, "step_loss": loss, "grad_norm": grad_norm,
             "skipped_steps": new_state.skipped, "nonfinite_streak": new_state.bad_streak}
  return new_state, metrics


def eval_step(setup: Setup, state: TrainState, frozen_base, frozen_models, batch):
  """Validation metrics of one batch (no update, no dropout)."""
  _, _, metrics, _ = loss_and_grads(setup, state, frozen_base, frozen_models, batch, 1, train=False)
  return metrics


# ----------------------------------------------------------------------------------------------
# Set-up.


_DUMMY_TOKENS = jax.ShapeDtypeStruct((1, 8), jnp.int32)  # init input; shapes do not depend on it


def abstract_variables(module: nn.Module):
  """``eval_shape`` of ``module.init``: the params tree of ``nn.Partitioned`` boxes (shapes, dtypes
  and logical axis names), under ``"params"``."""
  return jax.eval_shape(module.init, jax.random.key(0), _DUMMY_TOKENS)


def init_params(module: nn.Module, rng, mesh, rules, *, checkpoint: str = "", where: str,
                dtype=None):
  """Params of ``module`` laid out by the logical rules: freshly initialised on the devices, or
  restored from ``checkpoint`` (a converted checkpoint directory or a finished run's workdir) with
  any parameter the checkpoint lacks (a new value head) freshly initialised. ``dtype``: store them
  in this dtype (cast while initialising / restoring) instead of the module's ``param_dtype``."""
  dummy = jnp.zeros(_DUMMY_TOKENS.shape, _DUMMY_TOKENS.dtype)
  abstract = abstract_variables(module)
  shardings = mesh_lib.shardings_for(abstract, mesh, rules)["params"]
  stored_dtype = lambda x: x.dtype if dtype is None else dtype

  def init(names):
    """Initialise only the top-level subtrees ``names`` (XLA drops the rest of ``module.init``)."""
    fn = lambda r: {k: jax.tree_util.tree_map(lambda x: x.astype(stored_dtype(x)), v)
                    for k, v in nn.meta.unbox(module.init(r, dummy))["params"].items()
                    if k in names}
    return jax.jit(fn, out_shardings={k: shardings[k] for k in names})(rng)

  if not checkpoint:
    return init(set(shardings))
  abstract_params = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, stored_dtype(x), sharding=s),
      mesh_lib.strip_boxes(abstract)["params"], shardings)
  restored = checkpointing.load_params(pathlib.Path(checkpoint), abstract_params, where=where)
  missing = set(abstract_params) - set(restored)
  return {**init(missing), **restored} if missing else restored


def _replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _rngs(config):
  """``(model init, LoRA init, train state)`` keys from ``config.seed``."""
  return jax.random.split(jax.random.key(config.seed), 3)


def initial_params(config, objective, mesh, rules):
  """The trained model's params before the first step (``config.init.checkpoint`` or random)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return init_params(objective.model, _rngs(config)[0], mesh, rules,
                       checkpoint=config.init.checkpoint, where="config.init.checkpoint")


def frozen_param_dtype(config):
  """``config.train.frozen_param_dtype``: the storage dtype of the frozen critic / reference
  params (they still compute in their module's ``dtype``), None for "" (their ``param_dtype``)."""
  name = config.train.frozen_param_dtype
  if not name:
    return None
  try:
    dtype = jnp.dtype(name)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"config.train.frozen_param_dtype={name!r}: expected '' (the models' "
                     f"param_dtype) or a floating dtype name such as 'bfloat16'")
  return dtype


def build_state(config, objective, mesh, rules, total_steps: int):
  """``(state, setup)`` for a fresh run (restoring a checkpoint replaces the state later)."""
  rng_model, rng_lora, rng_state = _rngs(config)
  frozen_dtype = frozen_param_dtype(config)
  params = initial_params(config, objective, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    frozen_models = {
        name: init_params(module, rng_model, mesh, rules, checkpoint=config[name].checkpoint,
                          where=f"config.{name}.checkpoint", dtype=frozen_dtype)
        for name, module in objective.frozen_models.items()}
  lora_cfg = lora.LoRAConfig(**config.lora.settings) if config.lora.enabled else None
  trainable_pattern = config.train.trainable
  is_trainable = optim.regex_matcher(trainable_pattern, where="config.train.trainable")
  trainable_params, frozen_base = optim.split(params, is_trainable)
  lora_params = {} if lora_cfg is None else jax.device_put(
      lora.init(rng_lora, params, lora_cfg), _replicated(mesh))
  trainable = {"params": trainable_params, "lora": lora_params}
  if not jax.tree_util.tree_leaves(trainable):
    raise ValueError(f"config.train.trainable={trainable_pattern!r} matches no parameter and LoRA "
                     f"is off: nothing would train")
  tx, schedules = optim.make_optimizer(config.optim, trainable, total_steps)
  opt_state = jax.jit(tx.init, out_shardings=optimizer_shardings(
      tx, objective.model, trainable, mesh, mesh_lib.optimizer_rules(config.mesh),
      is_trainable))(trainable)
  replicated = _replicated(mesh)
  state = TrainState(
      step=jax.device_put(jnp.int32(0), replicated), trainable=trainable, opt_state=opt_state,
      aux=jax.device_put(objective.init_aux(params), replicated),
      rng=jax.device_put(jax.random.key_data(rng_state), replicated),
      skipped=jax.device_put(jnp.int32(0), replicated),
      bad_streak=jax.device_put(jnp.int32(0), replicated))
  batch_sharding = nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec("batch"), mesh, rules)
  setup = Setup(objective, lora_cfg, tx, frozen_base, frozen_models, mesh, rules, batch_sharding)
  return state, setup, schedules


def optimizer_shardings(tx, model: nn.Module, trainable, mesh, rules, is_trainable):
  """Shardings of ``tx.init(trainable)``: each moment laid out like its parameter under the
  optimizer rules of the preset (``shard_grad_op`` shards it although the parameter is
  replicated), LoRA moments and scalars (step counts) replicated."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    base = mesh_lib.shardings_for(abstract_variables(model), mesh, rules)["params"]
  replicated = _replicated(mesh)
  like_params = {"params": optim.split(base, is_trainable)[0],
                 "lora": jax.tree_util.tree_map(lambda _: replicated, trainable["lora"])}
  return optax.tree_map_params(tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, trainable),
                               like_params, transform_non_params=lambda _: replicated)


def _abstract_like(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def compile_steps(setup: Setup, config, state, batch):
  """``(train step, eval step, memory)``: jitted steps (the state keeps its shardings across steps)
  and the compiled memory per device of the train step in MiB (``{}`` if the backend has none)."""
  replicated = _replicated(setup.mesh)
  step = jax.jit(functools.partial(train_step, setup, config.train.grad_accum), donate_argnums=0,
                 out_shardings=(jax.tree_util.tree_map(lambda x: x.sharding, state), replicated))
  evaluate = jax.jit(functools.partial(eval_step, setup))
  with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
    compiled = step.lower(state, setup.frozen_base, setup.frozen_models, batch).compile()
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


def merged_params(setup: Setup, state: TrainState):
  """The trained model's full params tree with the LoRA adapters (if any) folded in."""
  params = full_params(state.trainable, setup.frozen_base)
  if setup.lora_cfg is not None:
    params = lora.merge(params, state.trainable["lora"], setup.lora_cfg)
  return params


def export_model(setup: Setup, state: TrainState, path: pathlib.Path, tokenizer) -> None:
  """Write the trained model (LoRA merged) as a converted-checkpoint directory
  (``wmtp_jax.checkpoints.pretrained`` layout) that other runs load by path: ``WORKDIR/model``."""
  if (path / pretrained.CONFIG_FILE).is_file():
    return  # a resumed, already finished run
  model = setup.objective.model
  pretrained.save_params(path, model.cfg, merged_params(setup, state),
                         kind=pretrained.model_kind(model))
  if jax.process_index() == 0:
    tokenizer.save_pretrained(str(path / pretrained.TOKENIZER_DIR))


# ----------------------------------------------------------------------------------------------
# The loop.


class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint at the next step boundary and stops."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def run(config, workdir: str | pathlib.Path, *, phase: str | None = None) -> dict[str, float]:
  """Train ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns final metrics."""
  workdir = pathlib.Path(workdir)
  phase = phase or config.pipeline
  # 1. Set-up.
  objective = objectives.build(config)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  checkpointing.check_run_config(workdir, config.to_dict())
  data = run_data.build(config, objective, workdir)
  total_steps = run_steps(config, data.examples_per_epoch)

  # 2. Abstract-first init.
  state, setup, schedules = build_state(config, objective, mesh, rules, total_steps)
  checkpointer = checkpointing.Checkpointer(
      workdir, every_steps=config.checkpoint.every_steps, keep=config.checkpoint.keep,
      best_metric=config.checkpoint.best_metric or None, best_mode=config.checkpoint.best_mode)

  # 3. Resume.
  iterator = iter(data.train)
  start = checkpointer.latest_step()
  if start is not None:
    state = checkpointer.restore(start, _abstract_like(state), iterator,
                                 num_indices=data.examples_per_epoch)
    log.info("resumed %s from step %d", workdir, start)
  start = int(start or 0)

  # 4. Compile.
  to_device = lambda b: data.to_global(b, setup.batch_sharding)
  first = to_device(next(iterator))
  step_fn, eval_fn, memory = compile_steps(setup, config, state, first)
  logger = metrics_log.MetricsLogger(workdir, phase=phase, total_steps=total_steps)
  if memory:
    logger.write(start, memory)
  peak = flops.peak_flops(config.train.peak_flops)
  preemption = _Preemption()

  # 5. Loop.
  pending = None
  last: dict[str, float] = {}
  batch = first
  step = start
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      while step < total_steps:
        t0 = time.time()
        state, metrics = step_fn(state, setup.frozen_base, setup.frozen_models, batch)
        step += 1
        if pending is not None:  # fetch the previous step's metrics while this one runs
          last = _log(logger, pending, schedules, objective, peak, config)
        pending = (step, metrics, _tokens_shape(batch), t0)
        _check_nonfinite(pending, config)
        val = None
        if config.train.eval_every and (step % config.train.eval_every == 0 or step == total_steps):
          val = _validate(eval_fn, setup, state, data, logger, step)
          last.update(val)
        last.update(interval.at_interval(config, setup, state, step, data, logger))
        # The iterator has yielded exactly the batches of steps 1 … step: save it before prefetching.
        saved = checkpointer.save(step, state, iterator, metrics=val,
                                  force=step == total_steps or preemption.requested)
        if preemption.requested:
          log.warning("SIGTERM: checkpoint at step %d %s; stopping", step,
                      "written" if saved else "not written")
          break
        if step < total_steps:
          batch = to_device(next(iterator))
      if pending is not None:
        last.update(_log(logger, pending, schedules, objective, peak, config, final=True))
    if step == total_steps:
      export_model(setup, state, workdir / pretrained.RUN_EXPORT_DIR, data.tokenizer)
  finally:
    preemption.restore()
    checkpointer.close()
    logger.close()
  return last


def run_steps(config, examples_per_epoch: int) -> int:
  """``config.train.steps``, or with ``config.train.epochs`` > 0 the steps of that many epochs."""
  if config.train.epochs <= 0:
    return config.train.steps
  return max(1, math.ceil(config.train.epochs * examples_per_epoch / config.data.batch_size))


def _check_nonfinite(pending, config) -> None:
  step, metrics, _, _ = pending
  streak = int(metrics["nonfinite_streak"])
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


def _log(logger, pending, schedules, objective, peak, config, *, final=False):
  step, metrics, (rows, seq_len), t0 = pending
  scalars, histograms = metrics_log.split_histograms(jax.device_get(metrics))
  values = metrics_log.flatten(scalars)
  step_time = time.time() - t0
  values["step_time_s"] = step_time
  values["tokens_per_s"] = rows * seq_len / step_time
  values["mfu"] = (flops.train_flops_per_token(objective, seq_len) * rows * seq_len
                   / step_time / peak)
  for name, schedule in schedules.items():
    values[f"lr/{name}"] = float(schedule(step - 1))
  if final or step % config.train.log_every == 0 or step == 1:
    logger.write(step, values, histograms)
    logger.progress(step, values)
  return values


def _validate(eval_fn, setup, state, data, logger, step):
  totals: dict[str, float] = {}
  n = 0
  for batch in data.validation():
    metrics, _ = metrics_log.split_histograms(jax.device_get(eval_fn(
        state, setup.frozen_base, setup.frozen_models, data.to_global(batch, setup.batch_sharding))))
    metrics = metrics_log.flatten(metrics)
    for k, v in metrics.items():
      totals[k] = totals.get(k, 0.0) + v
    n += 1
  values = {f"val_{k}": v / max(n, 1) for k, v in totals.items()}
  logger.write(step, values)
  return values
