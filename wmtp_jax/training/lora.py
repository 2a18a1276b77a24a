"""LoRA as a functional transform: low-rank adapters added to chosen projections at apply time.

For a targeted projection with kernel ``W`` (input dims ``I``, output dims ``O``) the output becomes
``x·W + (α/r) · dropout(x)·A·B`` with ``A [I, r]`` (random: PyTorch's ``kaiming_uniform_(a=√5)``
of PEFT and the reference, ``U(−1/√I, 1/√I)``) and ``B [r, O]`` (zeros at init, so a fresh
adapter leaves the model unchanged). The base parameters are untouched and can stay frozen
(no optimizer state); the adapters live in their own tree mirroring the parameter paths:
``lora["model"]["layers_0"]["attention"]["wq"] = {"a": [D, r], "b": [r, N·H]}``.

The adapters are applied with ``flax.linen.intercept_methods`` around ``model.apply`` (no merged
weight copy per step); ``merge`` folds them into the base weights for export and evaluation.

Target names: ours (``wq wk wv wo w1 w2 w3``) or the HF aliases (``q k v o gate up down``).
"""

import contextlib
import dataclasses
from collections.abc import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax.models import layers, scan_layout

ALIASES = {"q": "wq", "k": "wk", "v": "wv", "o": "wo", "gate": "w1", "up": "w3", "down": "w2"}
TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
# Kernels are [in..., out...]; the attention output projection ``wo [N, H, D]`` has two input dims.
N_INPUT_DIMS = {"wo": 2}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  targets: tuple[str, ...] = ("wq", "wk", "wv", "wo")

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"lora.rank={self.rank} must be ≥ 1")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")
    unknown = [t for t in self.targets if ALIASES.get(t, t) not in TARGETS]
    if unknown or not self.targets:
      raise ValueError(f"lora.targets {list(self.targets)}: unknown {unknown}; choose from "
                       f"{list(TARGETS)} or {list(ALIASES)}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def modules(self) -> frozenset[str]:
    return frozenset(ALIASES.get(t, t) for t in self.targets)


def _targets(params, cfg: LoRAConfig) -> dict[tuple[str, ...], np.ndarray]:
  """``{module path: kernel}`` of every targeted projection in a params tree."""
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(params))
  return {path[:-1]: w for path, w in flat.items()
          if path[-1] == "kernel" and len(path) >= 2 and path[-2] in cfg.modules}


def _split(path: tuple[str, ...], shape: Sequence[int]) -> tuple[int, int]:
  n_in = N_INPUT_DIMS.get(path[-1], 1)
  return int(np.prod(shape[:n_in])), int(np.prod(shape[n_in:]))


def init(rng: jax.Array, params, cfg: LoRAConfig):
  """Adapters for every targeted kernel in ``params``: ``a ~ U(−1/√in, 1/√in)`` (kaiming-uniform
  with a = √5: gain √(2/(1+a²)) · √(3/in)), ``b = 0`` (fp32)."""
  if scan_layout.scanned_paths(params):
    raise ValueError(f"LoRA needs per-layer blocks, the model has scanned ones "
                     f"({['/'.join(p) for p in scan_layout.scanned_paths(params)]}): set the "
                     f"model's scan_layers=False or disable lora")
  targets = _targets(params, cfg)
  if not targets:
    raise ValueError(f"lora.targets {list(cfg.targets)} match no parameter of the model")
  flat = {}
  for i, (path, kernel) in enumerate(sorted(targets.items())):
    n_in, n_out = _split(path, kernel.shape)
    bound = 1.0 / np.sqrt(n_in)
    a = jax.random.uniform(jax.random.fold_in(rng, i), (n_in, cfg.rank), jnp.float32, -bound,
                           bound)
    flat[path + ("a",)] = a
    flat[path + ("b",)] = jnp.zeros((cfg.rank, n_out), jnp.float32)
  return flax.traverse_util.unflatten_dict(flat)


def _delta(adapter, shape: Sequence[int], scale: float):
  return (scale * adapter["a"] @ adapter["b"]).reshape(shape)


def merge(params, lora, cfg: LoRAConfig):
  """Base params with ``W + (α/r)·A·B`` folded in (same tree, same dtypes)."""
  flat = flax.traverse_util.flatten_dict(params)
  for path, adapter in _adapters(lora).items():
    w = flat[path + ("kernel",)]
    flat[path + ("kernel",)] = (w + _delta(adapter, w.shape, cfg.scale)).astype(w.dtype)
  return flax.traverse_util.unflatten_dict(flat)


def _adapters(lora) -> dict[tuple[str, ...], dict]:
  flat = flax.traverse_util.flatten_dict(lora)
  return {path[:-1]: {"a": flat[path[:-1] + ("a",)], "b": flat[path[:-1] + ("b",)]}
          for path in flat if path[-1] == "a"}


@contextlib.contextmanager
def applied(lora, cfg: LoRAConfig, *, rng: jax.Array | None = None):
  """Within this context, ``model.apply`` adds the adapters to the targeted projections.

  ``rng`` enables LoRA dropout on the adapter input (training); ``None`` means deterministic.
  Module paths are those of the applied module's params tree (the tree ``init`` was given).
  """
  adapters = _adapters(lora)
  index = {path: i for i, path in enumerate(sorted(adapters))}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, layers.Projection):
      return out
    path = tuple(module.path)
    if path not in adapters:
      return out
    adapter, x = adapters[path], args[0]
    n_in = N_INPUT_DIMS.get(path[-1], 1)
    x_flat = x.reshape(*x.shape[:x.ndim - n_in], -1)
    if rng is not None and cfg.dropout > 0:
      keep = jax.random.bernoulli(jax.random.fold_in(rng, index[path]), 1 - cfg.dropout,
                                  x_flat.shape)
      x_flat = jnp.where(keep, x_flat / (1 - cfg.dropout), 0).astype(x_flat.dtype)
    delta = (x_flat @ adapter["a"].astype(x.dtype)) @ adapter["b"].astype(x.dtype)
    return out + (cfg.scale * delta).reshape(out.shape).astype(out.dtype)

  with nn.intercept_methods(interceptor):
    yield
