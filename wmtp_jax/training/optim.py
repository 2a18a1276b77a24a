"""Which parameters train, and how: trainable/frozen split, parameter groups, AdamW schedule.

Parameters are addressed by their path string ``"model/layers_0/attention/wq/kernel"`` (``/``-joined
tree keys). ``split`` separates a params tree into the trainable part (gets gradients and optimizer
state) and the frozen part (passed to the step as a constant, never donated); ``combine`` rejoins
them for ``model.apply``.

Config (``config.optim``)::

    lr, min_lr_ratio, warmup_steps, weight_decay, b1, b2, eps, grad_clip,
    groups = {"value_head": {"pattern": "value_head/.*", "lr": 1e-4}}   # optional, by regex

Schedule: linear warm-up to ``lr`` over ``warmup_steps``, cosine decay to ``min_lr_ratio·lr`` at the
last step. Weight decay applies to kernels, embedding tables and LoRA adapters, by name, the same
for per-layer blocks and ``nn.scan`` stacks (``decay_mask``): not to norm scales, biases,
value-head scalars.
"""

import re
from collections.abc import Callable, Mapping

import flax
import jax
import optax


def path_str(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def split(params, is_trainable: Callable[[str], bool]):
  """``(trainable, frozen)`` nested dicts; each leaf goes to exactly one side."""
  flat = flax.traverse_util.flatten_dict(params)
  trainable = {p: v for p, v in flat.items() if is_trainable(path_str(p))}
  frozen = {p: v for p, v in flat.items() if p not in trainable}
  return (flax.traverse_util.unflatten_dict(trainable), flax.traverse_util.unflatten_dict(frozen))


def combine(*trees):
  """Merge disjoint nested dicts (the inverse of ``split``)."""
  flat = {}
  for tree in trees:
    flat.update(flax.traverse_util.flatten_dict(tree))
  return flax.traverse_util.unflatten_dict(flat)


def regex_matcher(pattern: str, *, where: str) -> Callable[[str], bool]:
  """``fullmatch`` predicate; a bad pattern is an error naming the config key."""
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{where}={pattern!r} is not a valid regular expression: {e}") from e
  return lambda path: compiled.fullmatch(path) is not None


def schedule(lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> optax.Schedule:
  """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio · lr`` at ``total_steps``."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup_steps else lr, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * min_lr_ratio)


def group_labels(trainable, groups: Mapping[str, Mapping]) -> dict:
  """Label tree: the first group whose ``pattern`` fully matches a path, else ``"default"``."""
  matchers = [(name, regex_matcher(g["pattern"], where=f"config.optim.groups.{name}.pattern"))
              for name, g in groups.items()]
  def label(path, _):
    s = path_str(tuple(k.key for k in path))
    return next((name for name, match in matchers if match(s)), "default")
  return jax.tree_util.tree_map_with_path(label, trainable)


# Leaf names of the base params that weight decay applies to (norm scales are ``weight``).
DECAYED = ("kernel", "embedding")


def decay_mask(trainable):
  """``True`` for each leaf of ``trainable = {"params": …, "lora": …}`` that weight decay applies
  to: the base params named in ``DECAYED`` and every LoRA adapter (``a [I, r]``, ``b [r, O]``).
  By name, not by rank: a scanned RMSNorm scale ``[L, D]`` does not decay."""
  def decays(path, _):
    keys = [k.key for k in path]
    return keys[0] == "lora" or keys[-1] in DECAYED
  return jax.tree_util.tree_map_with_path(decays, trainable)


def make_optimizer(optim_cfg, trainable, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                    dict[str, optax.Schedule]]:
  """Global-norm clipping, then AdamW per parameter group; returns the schedules for logging."""
  groups = dict(optim_cfg.groups) if optim_cfg.get("groups") else {}
  if "default" in groups:
    raise ValueError("config.optim.groups: 'default' is reserved for parameters no group matches")
  lrs = {"default": optim_cfg.lr, **{name: g["lr"] for name, g in groups.items()}}
  schedules = {name: schedule(lr, total_steps, optim_cfg.warmup_steps, optim_cfg.min_lr_ratio)
               for name, lr in lrs.items()}
  mask = decay_mask(trainable)
  transforms = {name: optax.adamw(s, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                                  weight_decay=optim_cfg.weight_decay, mask=mask)
                for name, s in schedules.items()}
  tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip),
                   optax.multi_transform(transforms, group_labels(trainable, groups)))
  return tx, schedules
