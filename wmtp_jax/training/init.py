"""The parameters a run starts from: abstract-first initialisation laid out by the logical rules,
or a checkpoint restored into those layouts; the seeds; the storage dtype of frozen models."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from wmtp_jax.checkpoints import checkpointer as checkpointing
from wmtp_jax.training import mesh as mesh_lib

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


def rngs(config):
  """``(model init, LoRA init, train state)`` keys from ``config.seed``."""
  return jax.random.split(jax.random.key(config.seed), 3)


def initial_params(config, objective, mesh, rules):
  """The trained model's params before the first step (``config.init.checkpoint`` or random)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return init_params(objective.model, rngs(config)[0], mesh, rules,
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
