"""The scanned parameter layout (``scan_layers=True``) and the per-layer layout on disk.

A scanned model (``MTPConfig.scan_layers``, ``LlamaConfig.scan_layers``; ``layers.run_blocks``)
holds its repeated blocks as one subtree whose leaves carry a leading ``layers`` axis ``[L, …]``:

    per-layer (unscanned, on disk)              scanned
    trunk_0/… … trunk_{L−1}/…          ↔       trunk/…          (MTP trunk)
    model/layers_0/… … model/layers_{L−1}/…  ↔  model/layers/…   (LLaMA, value model)

Checkpoints keep ONE format, the per-layer one: ``pretrained.save_params`` unstacks a scanned tree
before writing and ``pretrained.restore_params`` restores a scanned target through its per-layer
view and stacks, so scanned and unscanned models read each other's files.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

# Paths of the scanned subtrees; the per-layer blocks are their siblings ``<last name>_<i>``.
SCANNED_PATHS = (("trunk",), ("model", "layers"))


def scanned_paths(params) -> list[tuple[str, ...]]:
  """The ``SCANNED_PATHS`` present in a (scanned) params tree; ``[]`` for a per-layer tree."""
  return [path for path in SCANNED_PATHS if _get(params, path) is not None]


def stack_layers(params, path: tuple[str, ...]):
  """Per-layer → scanned: the blocks ``<path>_0 … <path>_{L−1}`` become one subtree ``path`` whose
  leaves are theirs stacked on a new leading axis ``[L, …]`` (numpy stays numpy). Pure."""
  parent, name = _get(params, path[:-1]), path[-1]
  pattern = re.compile(rf"{re.escape(name)}_(\d+)")
  indices = sorted(int(m.group(1)) for key in parent if (m := pattern.fullmatch(key)))
  if indices != list(range(len(indices))) or not indices:
    raise ValueError(f"cannot stack {'/'.join(path)}: expected blocks {name}_0 … {name}_{{L-1}}, "
                     f"found indices {indices}")
  blocks = [parent[f"{name}_{i}"] for i in indices]
  stacked = jax.tree.map(lambda *xs: _stack(xs), *blocks)
  rest = {k: v for k, v in parent.items() if not pattern.fullmatch(k)}
  return _put(params, path[:-1], {**rest, name: stacked})


def unstack_layers(params, path: tuple[str, ...]):
  """Scanned → per-layer, the inverse of ``stack_layers``. Leaves may also be
  ``jax.ShapeDtypeStruct`` (abstract targets): the leading axis leaves shape and sharding."""
  parent, name = _get(params, path[:-1]), path[-1]
  stacked = parent[name]
  n_layers = jax.tree.leaves(stacked)[0].shape[0]
  blocks = {f"{name}_{i}": jax.tree.map(lambda x, i=i: _layer(x, i), stacked)
            for i in range(n_layers)}
  rest = {k: v for k, v in parent.items() if k != name}
  return _put(params, path[:-1], {**rest, **blocks})


def to_per_layer(params):
  """``params`` with every scanned subtree unstacked (the on-disk layout); per-layer ones as is."""
  for path in scanned_paths(params):
    params = unstack_layers(params, path)
  return params


def to_scanned(params, paths: list[tuple[str, ...]]):
  """``params`` with the per-layer blocks of each of ``paths`` stacked (``stack_layers``)."""
  for path in paths:
    params = stack_layers(params, path)
  return params


def _stack(xs):
  if all(isinstance(x, np.ndarray) for x in xs):
    return np.stack(xs)
  return jnp.stack(xs)


def _layer(x, i: int):
  if not isinstance(x, jax.ShapeDtypeStruct):
    return x[i]
  sharding = x.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(
        *sharding.spec[1:]))
  return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)


def _get(tree, path: tuple[str, ...]):
  for key in path:
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _put(tree, path: tuple[str, ...], value):
  """A copy of ``tree`` with the subtree at ``path`` replaced by ``value`` (no input is mutated)."""
  if not path:
    return value
  return {**tree, path[0]: _put(tree[path[0]], path[1:], value)}
