"""The device mesh and the logical-axis rules that map model axis names onto it.

Models name their axes (``batch``, ``length``, ``embed``, ``heads``, ``kv_heads``, ``head_dim``,
``mlp``, ``vocab``, ``future``, ``layers``); the config says how each maps onto the mesh axes
``data``, ``fsdp``, ``tensor``. Flax applies the rules by priority: if a mesh axis is already used
by an earlier dimension of the same array, the next rule (or no sharding) applies, so the activation
``[batch, length, embed]`` keeps ``embed`` unsharded when ``batch`` already took ``fsdp``.

Config (``config.mesh``)::

    shape = {"data": -1, "fsdp": 1, "tensor": 1}   # -1 fills with the remaining devices
    preset = "full_shard"                          # | "shard_grad_op" | "no_shard"
    rules = (("embed", None), …)                   # optional: take priority over the preset's

Presets (``PRESETS``) give the rules of the parameters (and of the frozen models and activations)
and of the optimizer state; all put the batch on ``data`` × ``fsdp`` and attention heads, KV heads,
the MLP hidden and the vocabulary on ``tensor`` (tensor parallelism; a no-op when ``tensor`` = 1):

* ``full_shard`` (ZeRO-3-like): parameters, gradients and optimizer state sharded over ``fsdp``
  along ``embed``; XLA all-gathers each weight where it is used.
* ``shard_grad_op`` (ZeRO-2-like): parameters replicated over ``fsdp``; the optimizer state is
  sharded over ``fsdp`` (gradients are reduced into the sharded update, the updated parameters
  all-gathered once per step).
* ``no_shard``: pure data parallelism over ``data`` × ``fsdp`` (everything replicated there).
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

MESH_AXES = ("data", "fsdp", "tensor")

_TENSOR_PARALLEL: Rules = (
    ("batch", ("data", "fsdp")),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("length", None),
    ("head_dim", None),
    ("future", None),
    ("layers", None),
)
_SHARDED: Rules = (("embed", "fsdp"),) + _TENSOR_PARALLEL
_REPLICATED: Rules = (("embed", None),) + _TENSOR_PARALLEL

# Preset name → (parameter rules, optimizer-state rules).
PRESETS: dict[str, tuple[Rules, Rules]] = {
    "full_shard": (_SHARDED, _SHARDED),
    "shard_grad_op": (_REPLICATED, _SHARDED),
    "no_shard": (_REPLICATED, _REPLICATED),
}
DEFAULT_PRESET = "full_shard"
# The parameter rules of ``full_shard``: parameters over ``fsdp``, heads and MLP over ``tensor``.
DEFAULT_RULES: Rules = PRESETS[DEFAULT_PRESET][0]


def resolve_shape(shape: Mapping[str, int], n_devices: int) -> dict[str, int]:
  """Axis sizes with at most one ``-1`` filled so that their product is ``n_devices``."""
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"config.mesh.shape: unknown mesh axes {unknown}; known: {list(MESH_AXES)}")
  sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise ValueError(f"config.mesh.shape: at most one axis may be -1, got {fill}")
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"config.mesh.shape: sizes must be positive or -1, got {sizes}")
  if fill:
    if n_devices % known:
      raise ValueError(f"config.mesh.shape {sizes}: {n_devices} devices are not divisible by "
                       f"{known}")
    sizes[fill[0]] = n_devices // known
  if int(np.prod(list(sizes.values()))) != n_devices:
    raise ValueError(f"config.mesh.shape {sizes} needs {int(np.prod(list(sizes.values())))} "
                     f"devices, {n_devices} are available")
  return sizes


def make_mesh(shape: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ``Mesh`` over ``devices`` (default: all devices of all processes) with ``MESH_AXES``."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_shape(shape, len(devices))
  # Auto axes: XLA propagates shardings from the logical constraints (JAX ≥ 0.7 defaults to
  # Explicit axes, where a sharding constraint is an assertion).
  return jax.make_mesh(tuple(sizes.values()), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """The sharding of an array held whole by every device of ``mesh`` (scalars, LoRA adapters)."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def as_rules(rules: Sequence[Sequence]) -> Rules:
  """Normalise config rules (lists from a ConfigDict) into Flax's tuple-of-pairs form."""
  out = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(f"config.mesh.rules[{i}] = {rule!r}: expected (logical_name, mesh_axes)")
    name, axes = rule
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for axis in (axes if isinstance(axes, tuple) else (axes,)):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"config.mesh.rules[{i}] = {rule!r}: unknown mesh axis {axis!r}")
    out.append((name, axes))
  return tuple(out)


def _preset(mesh_cfg) -> tuple[Rules, Rules]:
  name = mesh_cfg.get("preset") or DEFAULT_PRESET
  if name not in PRESETS:
    raise ValueError(f"config.mesh.preset={name!r}: unknown; known: {sorted(PRESETS)}")
  return PRESETS[name]


def param_rules(mesh_cfg) -> Rules:
  """Rules of parameters and activations: ``mesh_cfg.rules`` (first: Flax takes the first rule
  of a logical name) followed by the preset's."""
  return as_rules(mesh_cfg.get("rules", ())) + _preset(mesh_cfg)[0]


def optimizer_rules(mesh_cfg) -> Rules:
  """Rules of the optimizer state (moments laid out like their parameters): ``mesh_cfg.rules``
  followed by the preset's optimizer rules."""
  return as_rules(mesh_cfg.get("rules", ())) + _preset(mesh_cfg)[1]


def shardings_for(abstract_tree, mesh: jax.sharding.Mesh, rules: Rules):
  """``NamedSharding`` tree for an abstract tree of ``nn.Partitioned`` boxes (from ``eval_shape``).

  Raises a clear error when a mesh axis does not divide the dimension it would shard.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  for path, leaf, sharding in zip(*_paths_and_leaves(abstract_tree), jax.tree_util.tree_leaves(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))):
    for dim, axes in zip(leaf.shape, sharding.spec):
      size = int(np.prod([mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))
                          if a is not None]))
      if dim % size:
        raise ValueError(f"parameter {path} of shape {tuple(leaf.shape)}: dimension {dim} is not "
                         f"divisible by mesh axes {axes} (size {size}); change config.mesh")
  return shardings


def strip_boxes(tree):
  """``tree`` without its ``nn.Partitioned`` boxes and without applying their sharding constraints
  (for abstract trees outside ``jit``, where ``nn.meta.unbox`` would constrain under a mesh)."""
  return nn.meta.map_axis_meta(lambda box: box.unbox(apply_constraint=False), tree)


def _paths_and_leaves(tree):
  unboxed = strip_boxes(tree)
  flat = jax.tree_util.tree_flatten_with_path(unboxed)[0]
  return [jax.tree_util.keystr(p) for p, _ in flat], [leaf for _, leaf in flat]
