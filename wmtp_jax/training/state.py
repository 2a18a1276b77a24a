"""The train state and what the step needs besides it; building them for a fresh run; the
trained model's params (LoRA merged) and their export.

The step is ``step(context, …)(state, frozen, batch)``: ``StepContext`` holds the static objects
(objective and model, LoRA config, optimizer, mesh, rules, batch sharding), bound into the jitted
function; the arrays are its arguments: the ``TrainState`` (donated) and the ``Frozen`` params.
``build_state`` splits the initial params into the trainable part (base params matching
``config.train.trainable`` and the LoRA adapters, with optimizer state) and the frozen part (the
rest of the base params, and the frozen critic / reference models).
"""

import dataclasses
import pathlib
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wmtp_jax import objectives
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.training import init as init_lib, lora, mesh as mesh_lib, optim


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


@flax.struct.dataclass
class Frozen:
  """The params that do not train: an argument of the step, never donated."""
  base: Any     # base params of the trained model that do not train (LoRA, config.train.trainable)
  models: dict  # {name: params} of the frozen critic / reference models


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What the step needs besides its arrays, fixed for a run: static objects only (no arrays),
  hashable, bound into the jitted steps."""
  objective: objectives.Objective
  lora_cfg: lora.LoRAConfig | None
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  rules: mesh_lib.Rules
  batch_sharding: jax.sharding.NamedSharding


def full_params(trainable, frozen_base):
  return optim.combine(trainable["params"], frozen_base)


def build_state(config, objective, mesh, rules, total_steps: int):
  """``(state, frozen, context, schedules)`` of a fresh run: the ``TrainState`` (restoring a
  checkpoint replaces it later), the ``Frozen`` params, the ``StepContext`` and the learning-rate
  schedules by parameter group (``{name: optax schedule}``, for logging)."""
  rng_model, rng_lora, rng_state = init_lib.rngs(config)
  frozen_dtype = init_lib.frozen_param_dtype(config)
  params = init_lib.initial_params(config, objective, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    frozen_models = {
        name: init_lib.init_params(module, rng_model, mesh, rules,
                                   checkpoint=config[name].checkpoint,
                                   where=f"config.{name}.checkpoint", dtype=frozen_dtype)
        for name, module in objective.frozen_models.items()}
  lora_cfg = lora.LoRAConfig(**config.lora.settings) if config.lora.enabled else None
  trainable_pattern = config.train.trainable
  is_trainable = optim.regex_matcher(trainable_pattern, where="config.train.trainable")
  trainable_params, frozen_base = optim.split(params, is_trainable)
  lora_params = {} if lora_cfg is None else jax.device_put(
      lora.init(rng_lora, params, lora_cfg), mesh_lib.replicated(mesh))
  trainable = {"params": trainable_params, "lora": lora_params}
  if not jax.tree_util.tree_leaves(trainable):
    raise ValueError(f"config.train.trainable={trainable_pattern!r} matches no parameter and LoRA "
                     f"is off: nothing would train")
  tx, schedules = optim.make_optimizer(config.optim, trainable, total_steps)
  opt_state = jax.jit(tx.init, out_shardings=optimizer_shardings(
      tx, objective.model, trainable, mesh, mesh_lib.optimizer_rules(config.mesh),
      is_trainable))(trainable)
  replicated = mesh_lib.replicated(mesh)
  state = TrainState(
      step=jax.device_put(jnp.int32(0), replicated), trainable=trainable, opt_state=opt_state,
      aux=jax.device_put(objective.init_aux(params), replicated),
      rng=jax.device_put(jax.random.key_data(rng_state), replicated),
      skipped=jax.device_put(jnp.int32(0), replicated),
      bad_streak=jax.device_put(jnp.int32(0), replicated))
  batch_sharding = nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec("batch"), mesh, rules)
  context = StepContext(objective, lora_cfg, tx, mesh, rules, batch_sharding)
  return state, Frozen(base=frozen_base, models=frozen_models), context, schedules


def optimizer_shardings(tx, model: nn.Module, trainable, mesh, rules, is_trainable):
  """Shardings of ``tx.init(trainable)``: each moment laid out like its parameter under the
  optimizer rules of the preset (``shard_grad_op`` shards it although the parameter is
  replicated), LoRA moments and scalars (step counts) replicated."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    base = mesh_lib.shardings_for(init_lib.abstract_variables(model), mesh, rules)["params"]
  replicated = mesh_lib.replicated(mesh)
  like_params = {"params": optim.split(base, is_trainable)[0],
                 "lora": jax.tree_util.tree_map(lambda _: replicated, trainable["lora"])}
  return optax.tree_map_params(tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, trainable),
                               like_params, transform_non_params=lambda _: replicated)


def merged_params(context: StepContext, state: TrainState, frozen: Frozen):
  """The trained model's full params tree with the LoRA adapters (if any) folded in."""
  params = full_params(state.trainable, frozen.base)
  if context.lora_cfg is not None:
    params = lora.merge(params, state.trainable["lora"], context.lora_cfg)
  return params


def export_model(context: StepContext, state: TrainState, frozen: Frozen, path: pathlib.Path,
                 tokenizer) -> None:
  """Write the trained model (LoRA merged) as a converted-checkpoint directory
  (``wmtp_jax.checkpoints.pretrained`` layout) that other runs load by path: ``WORKDIR/model``."""
  if (path / pretrained.CONFIG_FILE).is_file():
    return  # a resumed, already finished run
  model = context.objective.model
  pretrained.save_params(path, model.cfg, merged_params(context, state, frozen),
                         kind=pretrained.model_kind(model))
  if jax.process_index() == 0:
    tokenizer.save_pretrained(str(path / pretrained.TOKENIZER_DIR))
