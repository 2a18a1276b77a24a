"""What a ``--run`` argument holds: the critic or reference to analyse, the settings that turn its
outputs into weights, and the dataset of its held-out samples (the package docstring lists the
accepted directories)."""

import dataclasses
import json
import pathlib

import ml_collections

from wmtp_jax.checkpoints import checkpointer, pretrained
from wmtp_jax.config import common as config_lib
from wmtp_jax.data import run_data

CRITIC, REFERENCE = "critic", "reference"
MODEL_KINDS = {CRITIC: "value", REFERENCE: "llama"}   # source kind → stored checkpoint kind
PIPELINES = {"critic": CRITIC, "verifiable": CRITIC, "ref_tuning": REFERENCE, "rho1": REFERENCE}
WEIGHTED = ("verifiable", "rho1")  # a main job's WORKDIR: these runs are preferred


@dataclasses.dataclass(frozen=True)
class Source:
  """Attributes:
    kind: ``"critic"`` or ``"reference"``.
    model: the converted checkpoint directory of the critic / reference.
    policy: the ``rho1`` run's trained policy (converted directory), else None.
    dataset: the dataset directory the samples come from.
    split: the held-out split read (``<split>.jsonl``).
    settings: the run's ``weighting`` (critic) or ``rho1`` (reference) section (a critic alone:
      ``configs/verifiable.py``'s ``weighting``), or None (a reference without a policy).
    rewards: the terminal TD error uses the reward (the run trains on incorrect samples too).
    ema: ``(mean, std)`` of the run's last logged EMA statistics, or None (whiten by the samples).
    n_heads: the policy's MTP heads (the per-term weights), 1 without a policy run.
    max_len: tokens per row (the run's ``data.max_len``; a checkpoint's maximum positions).
    add_eos: rows end with the closing EOS (the run's ``data.train_eos``; default True).
    label: a one-line description for the page.
  """
  kind: str
  model: pathlib.Path
  policy: pathlib.Path | None
  dataset: pathlib.Path
  split: str
  settings: ml_collections.ConfigDict | None
  rewards: bool
  ema: tuple[float, float] | None
  n_heads: int
  max_len: int
  add_eos: bool
  label: str


def find(run: str | pathlib.Path, *, data: str | None = None, split: str | None = None) -> Source:
  """The ``Source`` of ``--run`` (a run, a main job's WORKDIR or a converted checkpoint).

  Raises:
    FileNotFoundError: ``run`` does not exist, or a run's model / dataset is missing.
    ValueError: ``run`` is not a run or checkpoint, or holds no critic or reference.
  """
  path = pathlib.Path(run)
  if not path.is_dir():
    raise FileNotFoundError(f"--run {path}: no such directory")
  if (path / checkpointer.CONFIG_FILE).is_file():
    try:
      return _from_run(path, data, split)
    except (AttributeError, KeyError) as e:   # a key this analysis reads is missing
      raise ValueError(f"{path / checkpointer.CONFIG_FILE}: not a complete run config "
                       f"({e})") from e
  if (path / pretrained.CONFIG_FILE).is_file():
    return _from_checkpoint(path, data, split)
  runs = [d for d in sorted(path.iterdir()) if (d / checkpointer.CONFIG_FILE).is_file()]
  if not runs:
    raise ValueError(f"--run {path}: not a run (no {checkpointer.CONFIG_FILE}), not a converted "
                     f"checkpoint (no {pretrained.CONFIG_FILE}) and no run in a subdirectory")
  pipelines = {d: _read_config(d).pipeline for d in runs}
  usable = [d for d in runs if pipelines[d] in PIPELINES]
  preferred = [d for d in usable if pipelines[d] in WEIGHTED] or usable
  if len(preferred) != 1:
    found = ", ".join(f"{d.name} ({pipelines[d]})" for d in runs)
    why = "none has a critic or reference" if not preferred else "pass one of them as --run"
    raise ValueError(f"--run {path}: a main job's directory with the runs {found}; {why}")
  return _from_run(preferred[0], data, split)


def _read_config(run: pathlib.Path) -> ml_collections.ConfigDict:
  path = run / checkpointer.CONFIG_FILE
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise ValueError(f"{path}: not a run config ({e})") from e


def _model(path: str | pathlib.Path, what: str, kind: str) -> pathlib.Path:
  """The converted directory of ``path`` (a checkpoint or a finished run), checked to hold
  ``kind``."""
  if not str(path):
    raise ValueError(f"{what} is empty: the run names no model")
  model = pretrained.resolve(path)
  if not (model / pretrained.CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{what}: {path} holds no exported model ({pretrained.RUN_EXPORT_DIR}/"
                            f"{pretrained.CONFIG_FILE}); has the run finished?")
  stored = pretrained.stored_kind(model)
  if stored != kind:
    raise ValueError(f"{what}: {model} holds {pretrained.KIND_NAMES[stored]}, expected "
                     f"{pretrained.KIND_NAMES[kind]}")
  return model


def _dataset(data_cfg, data: str | None) -> pathlib.Path:
  if data is None:
    return run_data.dataset_dir(data_cfg)
  if not pathlib.Path(data).is_dir():
    raise FileNotFoundError(f"--data {data}: no such dataset directory")
  return pathlib.Path(data)


def _from_run(run: pathlib.Path, data: str | None, split: str | None) -> Source:
  config = _read_config(run)
  pipeline = config.pipeline
  if pipeline not in PIPELINES:
    raise ValueError(f"--run {run}: a {pipeline} run has no critic or reference to analyse; "
                     f"pass a {', '.join(PIPELINES)} run (or its main job's WORKDIR)")
  kind = PIPELINES[pipeline]
  policy, rewards, ema, n_heads = None, False, None, 1
  if pipeline in ("critic", "ref_tuning"):
    model = _model(run, f"--run {run}", MODEL_KINDS[kind])
    settings = config_lib.load("verifiable").weighting if kind == CRITIC else None
  elif pipeline == "verifiable":
    if "shared_head" in config:
      raise ValueError(f"--run {run}: a shared-head verifiable run takes its values from the "
                       f"policy's own value head; this analysis reads a separate critic")
    model = _model(config.critic.checkpoint, f"{run}: config.critic.checkpoint", "value")
    settings, rewards = config.weighting, config.data.samples == "all"
    ema = _last_ema(run) if settings.whitening == "ema" else None
    n_heads = config.model.n_future_tokens
  else:
    model = _model(config.reference.checkpoint, f"{run}: config.reference.checkpoint", "llama")
    policy = _model(run, f"--run {run}", "mtp")
    settings, n_heads = config.rho1, config.model.n_future_tokens
  return Source(kind=kind, model=model, policy=policy, dataset=_dataset(config.data, data),
                split=split or config.data.valid_split, settings=settings, rewards=rewards,
                ema=ema, n_heads=n_heads, max_len=config.data.max_len,
                add_eos=config.data.get("train_eos", True), label=f"{pipeline} run {run}")


def _last_ema(run: pathlib.Path) -> tuple[float, float] | None:
  """``(ema_mean, ema_std)`` of the last row of ``run/metrics.jsonl`` that logged them."""
  path = run / "metrics.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
  logged = [r for r in rows if "ema_mean" in r and "ema_std" in r]
  return (logged[-1]["ema_mean"], logged[-1]["ema_std"]) if logged else None


def _from_checkpoint(path: pathlib.Path, data: str | None, split: str | None) -> Source:
  if data is None:
    raise ValueError(f"--run {path} is a converted checkpoint, which names no dataset: give "
                     f"--data DATASET_DIR")
  dataset = _dataset(None, data)
  stored = pretrained.stored_kind(path)
  kinds = {v: k for k, v in MODEL_KINDS.items()}
  if stored not in kinds:
    raise ValueError(f"--run {path} holds {pretrained.KIND_NAMES[stored]}, neither a critic "
                     f"(value model) nor a reference (LLaMA); for a policy pass its rho1 run")
  kind = kinds[stored]
  config = pretrained.read_config(path)
  return Source(kind=kind, model=path, policy=None, dataset=dataset,
                split=split or "valid",
                settings=config_lib.load("verifiable").weighting if kind == CRITIC else None,
                rewards=False, ema=None, n_heads=1, max_len=config.max_position_embeddings,
                add_eos=True, label=f"{kind} checkpoint {path}")
