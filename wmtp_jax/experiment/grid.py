"""The runs of an experiment: arms × sweep values × seeds, and the prerequisites they share.

An experiment config (``configs/experiment.py``) names arms (a pipeline, its options and
``overrides``: ``(("weighting.control", "shuffled"), …)``), ``overrides`` for every arm (the
evaluation, the data), ``sweeps`` (``(("weighting.beta", (0.5, 1.0, 2.0)), …)``), ``seeds`` and a
``budget``. ``expand`` turns it into ``Run``s:

* every arm × sweep value × seed is a run in ``DIR/<arm>/<seed>/`` (``<arm>@<key>=<value>`` for a
  sweep value, ``<key>`` the last part of the dotted key). Sweeps are one axis at a time: each value of an axis replaces the default of
  every arm whose config has that key; a variant identical to another run's config is dropped;
  arms without the key stay as they are;
* the frozen models an arm trains first (``critic``, ``reference``: their ``checkpoint`` empty)
  are prerequisite runs, one per seed and distinct config, in
  ``DIR/_shared/<seed>/<name>-<hash>/``; the arms point their ``<name>.checkpoint`` there;
* ``budget.flops_of`` (an arm name) gives every arm ``budget.flops`` = that arm's FLOPs in
  ``budget.steps`` steps (equal FLOPs: an arm without frozen forwards gets more steps); empty
  gives every arm ``train.steps`` = ``budget.steps`` (equal steps).

Every override is checked against the pipeline's locked config before anything runs: an unknown
key is an error naming the arm and the key. A run is the command ``python -m wmtp_jax.main …``
(``Run.command``).
"""

import dataclasses
import hashlib
import json
import pathlib
import sys
from collections.abc import Callable

from wmtp_jax import failures
from wmtp_jax.config import common as config_lib

SHARED_DIR = "_shared"
FROZEN = ("critic", "reference")  # config sections of frozen models a run may train first
Overrides = tuple[tuple[str, object], ...]


@dataclasses.dataclass(frozen=True)
class Run:
  """One ``python -m wmtp_jax.main`` job of the experiment, in ``DIR/<name>``. ``arm`` is empty
  for a prerequisite; ``needs``: the names of the prerequisite runs it reads."""
  name: str
  arm: str
  seed: int
  pipeline: str
  variant: str
  overrides: Overrides
  needs: tuple[str, ...] = ()

  def workdir(self, root: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(root) / self.name

  def command(self, root: pathlib.Path) -> list[str]:
    """The job's command line (argv), the ``--config.<key>=<value>`` flags of its overrides."""
    return [sys.executable, "-m", "wmtp_jax.main",
            f"--config={config_lib.CONFIGS_DIR / self.pipeline}.py:{self.variant}",
            f"--workdir={self.workdir(root)}",
            *(f"--config.{key}={flag_value(value)}" for key, value in self.overrides)]


def flag_value(value) -> str:
  """``value`` as ml_collections parses it back from a ``--config.<key>=`` flag."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value)


def apply(config, overrides: Overrides, where: str):
  """``config`` (a locked ConfigDict, changed in place and returned) with ``overrides``; an
  unknown key or a value of the wrong type is a ``ValueError`` naming ``where`` and the key."""
  for key, value in overrides:
    unknown = failures.unknown_config_key(config, key)
    if unknown:
      raise ValueError(f"{where}: {unknown}")
    *parents, last = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    try:
      node[last] = tuple(value) if isinstance(value, list) else value
    except (TypeError, KeyError, AttributeError) as e:
      raise ValueError(f"{where}: override {key}={value!r}: {failures.one_line(e)}") from e
  return config


def leaves(tree: dict, prefix: str = "") -> dict[str, object]:
  """``{"a.b": value}`` of every non-dict value of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(leaves(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _digest(tree: dict) -> str:
  return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]


def arm_variants(experiment) -> list[tuple[str, str, str, Overrides]]:
  """``(name, pipeline, variant, overrides)`` of every arm and sweep value (module docstring)."""
  out, seen = [], {}
  for arm in experiment.arms:
    pipeline, variant, overrides = _arm(experiment, arm)
    base = config_of(pipeline, variant, overrides, arm)
    swept = [(f"{arm}@{key.split('.')[-1]}={flag_value(value)}", overrides + ((key, value),))
             for key, values in experiment.sweeps for value in values
             if failures.unknown_config_key(base, key) is None]
    for name, extra in swept or [(arm, overrides)]:
      digest = _digest(config_of(pipeline, variant, extra, name).to_dict())
      if digest not in seen:
        seen[digest] = name
        out.append((name, pipeline, variant, extra))
  for key, _ in experiment.sweeps:
    if not any(k == key for _, _, _, extra in out for k, _ in extra):
      raise ValueError(f"sweep {key!r}: no arm's config has this key")
  return out


def _arm(experiment, arm: str) -> tuple[str, str, Overrides]:
  """``(pipeline, variant, overrides)`` of ``arm``: its options after the experiment's size; the
  experiment's overrides, then the arm's."""
  spec = experiment.arms[arm]
  variant = ",".join(p for p in (experiment.size, spec.options) if p)
  return spec.pipeline, variant, tuple(experiment.overrides) + tuple(spec.overrides)


def config_of(pipeline: str, variant: str, overrides: Overrides, name: str):
  """The run config of arm ``name``: ``configs/<pipeline>.py:<variant>`` with ``overrides``."""
  return apply(config_lib.load(pipeline, variant), overrides, f"arm {name!r}")


def expand(experiment, root: pathlib.Path, step_flops: Callable[[object], float]) -> list[Run]:
  """The runs of ``experiment`` in ``root``, prerequisites first. ``step_flops(config)``: the
  mean train FLOPs of a step of a run config (for ``budget.flops_of``;
  ``runner.mean_step_flops``)."""
  variants = arm_variants(experiment)
  budget = experiment.budget
  if budget.flops_of:
    if budget.flops_of not in experiment.arms:
      raise ValueError(f"budget.flops_of={budget.flops_of!r} is not an arm "
                       f"(arms: {list(experiment.arms)})")
    reference = config_of(*_arm(experiment, budget.flops_of), budget.flops_of)
    steps = (("budget.flops", budget.steps * step_flops(reference)),)
  else:
    steps = (("train.steps", budget.steps),)
  prerequisites: dict[str, Run] = {}
  runs = []
  for seed in experiment.seeds:
    for name, pipeline, variant, overrides in variants:
      extra = overrides + steps + (("seed", seed),)
      config = config_of(pipeline, variant, extra, name)
      needs = []
      for section in FROZEN:
        if section in config and not config[section].checkpoint:
          run = _prerequisite(section, config[section].run, seed)
          prerequisites.setdefault(run.name, run)
          needs.append(run.name)
          extra += ((f"{section}.checkpoint", str(run.workdir(root) / run.pipeline)),)
      runs.append(Run(f"{name}/{seed}", name, seed, pipeline, variant, extra, tuple(needs)))
  return [*prerequisites.values(), *runs]


def _prerequisite(name: str, nested, seed: int) -> Run:
  """The run that trains the frozen model of ``nested`` (an arm's ``critic.run`` /
  ``reference.run``) at ``seed``: the leaves where it differs from its own config file are its
  overrides (the seed always); runs of equal configs share a name
  (``_shared/<seed>/<name>-<hash>``)."""
  nested_tree = {**nested.to_dict(), "seed": seed}
  fresh = leaves(config_lib.load(nested.pipeline, nested.variant).to_dict())
  overrides = (("seed", seed),) + tuple(
      (k, v) for k, v in leaves(nested_tree).items() if k != "seed" and fresh.get(k) != v)
  return Run(f"{SHARED_DIR}/{seed}/{name}-{_digest(nested_tree)}", "", seed, nested.pipeline,
             nested.variant, overrides)

