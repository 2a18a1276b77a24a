"""The ``evaluate`` pipeline (``configs/evaluate.py``): one checkpoint on one benchmark.

``run(config, workdir)`` loads the checkpoint (a converted one or a finished run), runs the protocol
of ``wmtp_jax.eval.protocol`` (``n_samples`` per problem at each of ``temperatures`` with
``top_p``, the best pass@1 kept; ``greedy`` adds greedy pass@1) with the prompts of
``prompt_mode`` (``wmtp_jax.eval.prompts``), adds per-head accuracy / perplexity on the dataset's
validation split when there is one, and writes into ``workdir``:

* ``samples.jsonl``: one line per sample (``task_id``, ``temperature`` (0: greedy), ``sample``,
  ``completion``, ``passed``, ``result``, ``finished_by``, ``n_tokens``);
* ``results.jsonl``: one line per problem (``problem_id``, ``n``, ``correct`` per temperature,
  ``greedy_passed``);
* ``summary.json``: the summary (``pass@k``, ``temperature``, ``by_temperature``,
  ``greedy_pass@1``, ``head_accuracy/<k>`` …), and tensorboard scalars; it prints a table.
"""

import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wmtp_jax.checkpoints import checkpointer as checkpointing, pretrained
from wmtp_jax.config import common as config_lib
from wmtp_jax.data import jsonl, tokenizer as tokenizer_lib
from wmtp_jax.eval import benchmarks, prompts, protocol, runner
from wmtp_jax.training import mesh as mesh_lib, metrics_log

log = logging.getLogger(__name__)


def _model_and_params(config, mesh, rules):
  """``(model, params, source dir or None)`` from ``config.checkpoint`` (its model config when it
  has one, else ``config.model``) or freshly initialised (a warning)."""
  checkpoint = pathlib.Path(config.checkpoint) if config.checkpoint else None
  source = pretrained.resolve(checkpoint) if checkpoint is not None else None
  if source is not None and not (source / pretrained.CONFIG_FILE).is_file():
    source = None
  if source is not None:
    overrides = {"dtype": config.dtype} if config.dtype else {}
    model_cfg = pretrained.read_config(source, **overrides)
    model = pretrained.KINDS[pretrained.kind_of(model_cfg)][1](model_cfg)
  else:
    model_cfg = dict(config.model)
    if config.dtype:
      model_cfg["dtype"] = config.dtype
    cls_cfg, cls_model = pretrained.KINDS[config.model_kind]
    model = cls_model(cls_cfg(**model_cfg))
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  shardings = mesh_lib.shardings_for(abstract, mesh, rules)["params"]
  abstract_params = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.meta.unbox(abstract)["params"], shardings)
  if checkpoint is not None:
    params = checkpointing.load_params(checkpoint, abstract_params, where="config.checkpoint")
  else:
    log.warning("config.checkpoint is empty: evaluating a randomly initialised model")
    init = jax.jit(lambda r: nn.meta.unbox(model.init(r, jnp.zeros((1, 8), jnp.int32)))["params"],
                   out_shardings=shardings)
    params = init(jax.random.key(config.seed))
  return model, params, source


def _dataset_dir(config) -> pathlib.Path | None:
  """The synthetic dataset (generated into the cache if needed) for the synthetic benchmark."""
  if config.benchmark != "synthetic":
    return pathlib.Path(config.data) if config.data else None
  if config.data:
    return pathlib.Path(config.data)
  from wmtp_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  return synthetic.cached_dataset()


def _tokenizer(config, source, dataset_dir):
  if config.tokenizer:
    path = pathlib.Path(config.tokenizer)
  elif source is not None and (source / "tokenizer").is_dir():
    path = source / "tokenizer"
  elif dataset_dir is not None and dataset_dir.is_dir() and (dataset_dir / "tokenizer").is_dir():
    path = dataset_dir / "tokenizer"
  else:
    raise FileNotFoundError("no tokenizer: set config.tokenizer (the checkpoint has no tokenizer/ "
                            "directory)")
  return tokenizer_lib.load_tokenizer(path)


def _table(title: str, rows: Mapping[str, Any]) -> str:
  width = max(len(k) for k in rows)
  lines = [title, "-" * max(len(title), width + 14)]
  for key, value in rows.items():
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    lines.append(f"{key:<{width}}  {shown}")
  return "\n".join(lines)


def flat(summary: Mapping[str, Any]) -> dict[str, Any]:
  """``summary`` with ``by_temperature`` spread into ``T<t>/<key>`` entries (tables, scalars)."""
  out = {k: v for k, v in summary.items() if k != "by_temperature"}
  for temperature, values in summary.get("by_temperature", {}).items():
    out.update({f"T{temperature}/{k}": v for k, v in values.items() if k.startswith("pass@")})
  return out


def settings(e, *, max_new_tokens: int, **kwargs) -> protocol.Settings:
  """The protocol settings of an evaluation config section ``e`` (``configs/evaluate.py`` or a
  training config's ``evaluate``), with ``kwargs`` added."""
  return protocol.Settings(
      n_samples=e.n_samples, temperatures=tuple(e.temperatures), top_p=e.top_p, ks=tuple(e.ks),
      greedy=e.greedy, max_new_tokens=max_new_tokens, batch_size=e.batch_size,
      timeout_s=e.timeout_s, memory_mb=e.memory_mb, **kwargs)


def run(config, workdir) -> dict:
  """The ``evaluate`` pipeline (module docstring): returns the summary (also written)."""
  workdir = pathlib.Path(workdir)
  config_lib.check_required(config)
  bench = benchmarks.get(config.benchmark)
  prompts.check_mode(config.prompt_mode, "config.prompt_mode")
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  model, params, source = _model_and_params(config, mesh, rules)
  dataset_dir = _dataset_dir(config)
  tokenizer = _tokenizer(config, source, dataset_dir)
  problems = benchmarks.load_problems(config.benchmark, dataset_dir or None,
                                      split=config.split or None, sanitized=config.sanitized)
  if config.limit:
    problems = problems[:config.limit]
  log.info("evaluating %d %s problems (%s prompts, %d samples at each of temperatures %s%s)",
           len(problems), config.benchmark, config.prompt_mode, config.n_samples,
           tuple(config.temperatures), ", and greedy" if config.greedy else "")
  max_new_tokens = benchmarks.generation_length(config.max_new_tokens, bench.name)
  result = protocol.evaluate(model, params, tokenizer, problems, settings(
      config, max_new_tokens=max_new_tokens, seed=config.seed, prompt_mode=config.prompt_mode,
      eos_trained=config.train_eos, benchmark=config.benchmark, workers=config.workers or None,
      draft_heads=config.draft_heads, test_kinds=tuple(config.test_kinds) or None, mesh=mesh,
      rules=rules))
  summary = {"benchmark": config.benchmark, "checkpoint": config.checkpoint, **result["summary"]}
  if config.heads_eval.enabled and dataset_dir is not None:
    h = config.heads_eval
    batches = runner.validation_batches(dataset_dir / f"{h.split}.jsonl", tokenizer,
                                        n_batches=h.batches, batch_size=h.batch_size,
                                        max_len=h.max_len, add_eos=config.train_eos)
    summary.update(runner.head_summary(model, params, batches, mesh, rules))
  if jax.process_index() == 0:
    jsonl.write_jsonl(workdir / "samples.jsonl", result["samples"], validate=None)
    jsonl.write_jsonl(workdir / "results.jsonl", result["problems"], validate=None)
    with jsonl.atomic_write(workdir / "summary.json") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
      f.write("\n")
    logger = metrics_log.MetricsLogger(workdir, phase=f"evaluate/{config.benchmark}",
                                       total_steps=1)
    logger.write(0, {k.replace("@", "_at_"): float(v) for k, v in flat(summary).items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
    logger.close()
    print(_table(f"{config.benchmark} ({len(problems)} problems, {workdir})",
                 {k: v for k, v in flat(summary).items() if k != "checkpoint"}), flush=True)
  return summary
