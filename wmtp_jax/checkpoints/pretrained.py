"""Converted checkpoint directories: the starting point of every pipeline.

Layout of a converted directory (written by ``python -m wmtp_jax.convert meta|hf``)::

  model_config.json   {"kind": "mtp" | "llama", "config": {<MTPConfig | LlamaConfig fields>},
                       "source": {"format": "meta" | "hf", "path": ..., "dtype": <torch dtype>}}
  params/             Orbax PyTree checkpoint of the Flax ``params`` tree (OCDBT, uncompressed:
                      weights barely compress and zstd would double the save time and memory),
                      with a SHA-256 manifest (``integrity``) verified before any tensor is read
  tokenizer/          the tokenizer files, loadable with ``transformers.AutoTokenizer``

``kind`` says which model the tree belongs to: ``mtp`` → ``mtp.MTPTransformer``, ``llama`` →
``llama.LlamaForCausalLM`` (``model/…`` + ``lm_head``; a ``ValueModel`` uses its ``model`` subtree).
``model_config.json`` is written last, so a directory without it is an incomplete conversion.
``source`` is informational; exports use its ``dtype`` as their default.

``load_pretrained`` restores the params **directly into the caller's shardings** (Orbax restore
with ``jax.ShapeDtypeStruct(..., sharding=...)`` targets): every device reads only its own shards,
there is never a full host copy per device. Everything is checked strictly against the model built
from the config: a missing, unexpected or wrongly shaped parameter is an error listing the names.
"""

import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from wmtp_jax.models import scan_layout, strict
from wmtp_jax.checkpoints import integrity, layouts
from wmtp_jax.data import tokenizer as tokenizer_lib
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM, ValueModel
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer

log = logging.getLogger("wmtp_jax")
CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
RUN_EXPORT_DIR = "model"  # a finished training run exports its model to WORKDIR/model
KINDS = {"mtp": (MTPConfig, MTPTransformer), "llama": (LlamaConfig, LlamaForCausalLM),
         "value": (LlamaConfig, ValueModel)}
KIND_NAMES = {"mtp": "an MTP model", "llama": "a LLaMA language model",
              "value": "a LLaMA value model"}
# Files of a tokenizer directory (HF fast/slow tokenizers, SentencePiece, GPT-2 style BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "chat_template.jinja")
# A bare SentencePiece ``tokenizer.model`` (Meta's releases) gets this config so that
# ``AutoTokenizer`` loads it as the LLaMA tokenizer, with a BOS token, as LLaMA-2's HF files say.
SENTENCEPIECE_CONFIG = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True,
                        "add_eos_token": False}

Config = MTPConfig | LlamaConfig
FlatShapes = Mapping[tuple[str, ...], tuple[int, ...]]


def resolve(path: str | os.PathLike) -> Path:
  """``path`` itself, or for a finished training run's ``WORKDIR`` its exported ``WORKDIR/model``
  (``wmtp_jax.training.loop`` writes it in this format, LoRA merged)."""
  path = Path(path)
  run_export = path / RUN_EXPORT_DIR
  return run_export if (run_export / CONFIG_FILE).is_file() else path


def main_job_hint(path: str | os.PathLike) -> str | None:
  """For a directory without a model but with models one level down (a main job's ``WORKDIR``:
  one finished run per trained model, ``baseline/``, ``critic/``, …): ``"is a main-job
  directory; did you mean WORKDIR/baseline (or WORKDIR/critic)?"``; else None."""
  path = Path(path)
  if not path.is_dir():
    return None
  runs = sorted(d for d in path.iterdir() if d.is_dir() and (resolve(d) / CONFIG_FILE).is_file())
  if not runs:
    return None
  others = f" (or {' or '.join(map(str, runs[1:]))})" if runs[1:] else ""
  return f"is a main-job directory; did you mean {runs[0]}{others}?"


def kind_of(config: Config) -> str:
  """``"mtp"`` or ``"llama"`` (a ``LlamaConfig`` is a language model unless a kind is given)."""
  return next(k for k, (cls, _) in KINDS.items() if isinstance(config, cls))


def model_kind(model: nn.Module) -> str:
  """The kind of a model instance: ``"mtp"``, ``"llama"`` or ``"value"``."""
  return next(k for k, (_, cls) in KINDS.items() if type(model) is cls)


def params_kind(params: Mapping[str, Any]) -> str:
  """The kind of model a params tree (or its abstract tree) belongs to, by its top-level names:
  ``model`` + ``value_head`` a value model, ``model`` (+ ``lm_head``) a LLaMA, else MTP."""
  if "model" not in params:
    return "mtp"
  return "value" if "value_head" in params else "llama"


def stored_kind(path: str | os.PathLike) -> str:
  """The ``kind`` in a converted directory's ``model_config.json``."""
  return _read_model_config(path)["kind"]


def read_config(path: str | os.PathLike, **overrides: Any) -> Config:
  """The model config of a converted directory, built strictly (unknown keys are errors), with
  ``overrides`` (e.g. ``param_dtype="bfloat16"``, ``dtype=…``, ``value_head=…``) applied."""
  data = _read_model_config(path)
  cls, _ = KINDS[data["kind"]]
  file = str(Path(path) / CONFIG_FILE)
  config = strict.from_dict(cls, data["config"], where=file)
  if overrides:
    config = strict.from_dict(cls, {**dataclasses.asdict(config), **overrides},
                              where=f"{file} (overrides)")
  return config


def source_dtype(path: str | os.PathLike) -> str | None:
  """The torch dtype name (``float16``, …) of the checkpoint the directory was converted from."""
  return _read_model_config(path).get("source", {}).get("dtype")


def _read_model_config(path: str | os.PathLike) -> dict:
  file = Path(path) / CONFIG_FILE
  if not file.is_file():
    hint = main_job_hint(path)
    raise FileNotFoundError(f"{path} {hint}" if hint else
                            f"{path}: not a converted checkpoint directory (no {CONFIG_FILE}; "
                            f"write one with `python -m wmtp_jax.convert meta|hf`)")
  data = json.loads(file.read_text())
  unknown = sorted(set(data) - {"kind", "config", "source"})
  if unknown:
    raise ValueError(f"{file}: unknown key(s) {unknown}; known: ['config', 'kind', 'source']")
  if data.get("kind") not in KINDS:
    raise ValueError(f"{file}: kind={data.get('kind')!r}, expected one of {sorted(KINDS)}")
  return data


def abstract_params(config: Config, kind: str | None = None):
  """``jax.eval_shape`` of the model's ``init``: the ``params`` tree of ``jax.ShapeDtypeStruct``
  (``config.param_dtype``), boxed in ``nn.Partitioned`` with the logical axis names."""
  _, model_cls = KINDS[kind or kind_of(config)]
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  return jax.eval_shape(model_cls(config).init, jax.random.key(0), tokens)["params"]


def _names(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  return {"/".join(path): value for path, value in flat.items()}


def _heads_hint(names: Iterable[str]) -> str | None:
  """For an MTP tree: the ``n_future_tokens`` and ``n_layers`` its parameter names imply."""
  count = lambda pattern: len({m.group(1) for n in names if (m := re.match(pattern, n))})
  n_trunk, n_heads = count(r"(trunk_\d+)/"), count(r"(head_\d+)/")
  if not n_heads:
    return None
  return (f"the params hold {n_trunk} trunk blocks and {n_heads} heads, i.e. "
          f"n_future_tokens={n_heads}, n_layers={n_trunk + n_heads}")


def check_params(config: Config, shapes: FlatShapes, where: str, kind: str | None = None) -> None:
  """Strict check of a flat ``{Flax path: shape}`` in the per-layer (on-disk) layout against the
  model built from ``config`` (a ``scan_layers`` model's tree is compared unstacked)."""
  expected = traverse_util.flatten_dict(
      scan_layout.to_per_layer(nn.meta.unbox(abstract_params(config, kind))))
  layouts.check_shapes(_names({p: a.shape for p, a in expected.items()}), _names(shapes), where,
                       what="params", hint=_heads_hint)


def _checkpointer() -> ocp.Checkpointer:
  """Synchronous PyTree checkpointer: numpy leaves are written in place (no defensive deep copy,
  which would double the host memory) and uncompressed."""
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                                      use_compression=False))


def save_params(path: str | os.PathLike, config: Config, params, *, kind: str | None = None,
                source: Mapping[str, str] | None = None) -> None:
  """Write ``params/`` (strictly checked against ``config``) and then ``model_config.json``.

  ``params``: nested dict of numpy or fully addressable jax arrays; a ``scan_layers`` model's tree
  is written unstacked (the one per-layer layout on disk, ``scan_layout``). The tokenizer is
  written separately (``copy_tokenizer``).
  """
  path = Path(path)
  params = scan_layout.to_per_layer(params)
  flat = traverse_util.flatten_dict(params)
  kind = kind or kind_of(config)
  check_params(config, {p: np.shape(v) for p, v in flat.items()}, where=str(path), kind=kind)
  _checkpointer().save((path / PARAMS_DIR).absolute(), args=ocp.args.PyTreeSave(params))
  if jax.process_index() == 0:
    integrity.write_manifest(path / PARAMS_DIR)
  data = {"kind": kind, "config": dataclasses.asdict(config)}
  if source is not None:
    data["source"] = dict(source)
  (path / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")


_VERIFIED: dict[Path, tuple] = {}  # params dir → the file stats it had when it was checked


def verify_params(path: str | os.PathLike) -> None:
  """Check ``path/params`` against its checksum manifest (again only when a file's size or mtime
  changed since this process last checked it); a directory written before manifests existed is
  accepted with a warning."""
  directory = (Path(path) / PARAMS_DIR).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory}: missing (the converted directory has no params)")
  stamp = tuple((str(p), s.st_size, s.st_mtime_ns) for p in sorted(directory.rglob("*"))
                if (s := p.stat()) and p.is_file())
  if _VERIFIED.get(directory) == stamp:
    return
  if not integrity.verify(directory, required=False):
    log.warning("%s has no %s: its bytes cannot be checked", directory, integrity.MANIFEST)
  _VERIFIED[directory] = stamp


def stored_shapes(path: str | os.PathLike) -> dict[tuple[str, ...], tuple[int, ...]]:
  """``{Flax path: shape}`` of the stored params, from the Orbax metadata (no tensor is read;
  the files are checked against the manifest first)."""
  verify_params(path)
  directory = (Path(path) / PARAMS_DIR).absolute()
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(directory).item_metadata
  if metadata is None or metadata.tree is None:
    raise integrity.CorruptCheckpointError(
        f"{directory}: no readable Orbax metadata (_METADATA missing or damaged): an incomplete "
        f"or corrupted save")
  return {p: tuple(m.shape) for p, m in traverse_util.flatten_dict(metadata.tree).items()}


def restore_params(path: str | os.PathLike, target, *, unused: Iterable[str] = ()):
  """Restore ``params/`` into ``target``, a tree of ``jax.ShapeDtypeStruct``: leaves with a
  ``sharding`` come back as ``jax.Array`` laid out that way (each device reads its shards), leaves
  without as numpy. Values are cast to the target dtypes. Strict: the stored names and shapes must
  equal the target's (Orbax alone would silently ignore a numpy target's shape), except stored
  top-level subtrees named in ``unused`` (e.g. the ``lm_head`` of a LLaMA whose backbone starts a
  value model), which are not read.

  A ``scan_layers`` target (``scan_layout``) is restored through its per-layer view (the stored
  layout), then stacked into its shardings (transiently both copies of the stacked blocks)."""
  paths = scan_layout.scanned_paths(target)
  if paths:
    per_layer = restore_params(path, scan_layout.to_per_layer(target), unused=unused)
    stack = lambda tree: scan_layout.to_scanned(tree, paths)
    if any(getattr(a, "sharding", None) is None for a in jax.tree.leaves(target)):
      return stack(per_layer)
    return jax.jit(stack, out_shardings=jax.tree.map(lambda a: a.sharding, target))(per_layer)
  unused = frozenset(unused)
  want = {p: a.shape for p, a in traverse_util.flatten_dict(target).items()}
  stored = {p: s for p, s in stored_shapes(path).items() if p[0] not in unused}
  layouts.check_shapes(_names(want), _names(stored), str(path), what="params", hint=_heads_hint)
  directory = (Path(path) / PARAMS_DIR).absolute()
  if not unused:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(directory, target)
  restore_args = jax.tree.map(
      lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype)
      if getattr(a, "sharding", None) is not None else ocp.RestoreArgs(restore_type=np.ndarray,
                                                                       dtype=a.dtype), target)
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))


def load_pretrained(path: str | os.PathLike, *,
                    shardings: Callable[[Any], Any] | None = None,
                    **overrides: Any) -> tuple[Config, dict]:
  """Load a converted directory: ``(config, params)`` with ``params`` as ``jax.Array``s.

  Args:
    path: a directory written by ``python -m wmtp_jax.convert meta|hf``, or a finished training
      run's ``WORKDIR`` (``resolve``).
    shardings: ``None`` (every array on the first local device) or a function of the boxed
      abstract params (``abstract_params``: ``nn.Partitioned`` with logical axis names around
      ``jax.ShapeDtypeStruct``) returning a matching tree of ``jax.sharding.Sharding``, e.g.
      ``lambda a: nn.logical_to_mesh_sharding(nn.get_partition_spec(a), mesh, rules)``. Arrays are
      restored directly into those shardings.
    **overrides: config fields to change, e.g. ``param_dtype="bfloat16"`` (the values are cast
      while reading) or ``dtype`` (compute); unknown fields are errors.
  """
  path = resolve(path)
  config = read_config(path, **overrides)
  boxed = abstract_params(config, stored_kind(path))
  abstract = nn.meta.unbox(boxed)
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    placement = jax.tree.map(lambda _: device, abstract)
  else:
    placement = shardings(boxed)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, placement)
  return config, restore_params(path, target)


class LazyParams(Mapping):
  """Read-on-access flat view of a converted directory's params: ``params[path]`` restores that
  one tensor as numpy in ``dtype`` (host memory: one tensor at a time)."""

  def __init__(self, path: str | os.PathLike, dtype):
    self._path, self._dtype = Path(path), jnp.dtype(dtype)
    self._shapes = stored_shapes(path)
    self._checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())

  def __getitem__(self, path: tuple[str, ...]) -> np.ndarray:
    item = traverse_util.unflatten_dict(
        {path: jax.ShapeDtypeStruct(self._shapes[path], self._dtype)})
    restored = self._checkpointer.restore(
        (self._path / PARAMS_DIR).absolute(),
        args=ocp.args.PyTreeRestore(item=item,
                                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                    partial_restore=True))
    return traverse_util.flatten_dict(restored)[path]

  def __iter__(self) -> Iterator[tuple[str, ...]]:
    return iter(self._shapes)

  def __len__(self) -> int:
    return len(self._shapes)

  def shapes(self) -> dict[tuple[str, ...], tuple[int, ...]]:
    return dict(self._shapes)


def copy_tokenizer(src: str | os.PathLike, path: str | os.PathLike, vocab_size: int, *,
                   where: str) -> Path:
  """Copy a tokenizer into ``path/tokenizer`` and check it loads and fits ``vocab_size``.

  ``src``: a directory holding tokenizer files (``TOKENIZER_FILES``) or a SentencePiece
  ``tokenizer.model`` file; a bare ``tokenizer.model`` gets ``SENTENCEPIECE_CONFIG``.
  """
  src, dst = Path(src), Path(path) / TOKENIZER_DIR
  files = [src] if src.is_file() else [src / n for n in TOKENIZER_FILES if (src / n).is_file()]
  if not files:
    raise FileNotFoundError(f"{src}: no tokenizer files (looked for {list(TOKENIZER_FILES)})")
  dst.mkdir(parents=True)
  for file in files:
    shutil.copyfile(file, dst / file.name)
  if [f.name for f in files] == ["tokenizer.model"]:
    (dst / "tokenizer_config.json").write_text(json.dumps(SENTENCEPIECE_CONFIG, indent=2) + "\n")
  tokenizer_lib.check_vocab(tokenizer_lib.load_tokenizer(dst), vocab_size, where=where)
  return dst


def load_tokenizer(path: str | os.PathLike):
  """The tokenizer of a converted directory (``transformers`` tokenizer)."""
  return tokenizer_lib.load_tokenizer(Path(path) / TOKENIZER_DIR)
