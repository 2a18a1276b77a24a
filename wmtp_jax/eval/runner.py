"""Evaluation of a model on benchmark problems: generate, score in the sandbox, pass@k.

``evaluate_problems`` is the library entry (training pipelines call it at an interval and after
training); ``run(config, workdir)`` is the ``evaluate`` pipeline of ``wmtp_jax.main``
(``configs/evaluate.py``): it loads a checkpoint, evaluates one benchmark and writes
``samples.jsonl`` (one line per sample), ``results.jsonl`` (one line per problem),
``summary.json`` and tensorboard scalars into ``workdir``, and prints a table.
"""

import functools
import json
import logging
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.decoding import generator as gen
from wmtp_jax.decoding.sampling import Sampling
from wmtp_jax.data import jsonl
from wmtp_jax.eval import benchmarks, passk

log = logging.getLogger(__name__)

_GENERATORS: dict[Any, gen.Generator] = {}
_DECODE_CONTEXT_TOKENS = 8  # prompt tokens decoded with a completion (keeps its leading spaces)


def _generator(model, draft_heads: int, mesh, rules) -> gen.Generator:
  """Generators are cached so that repeated evaluations (every N training steps) reuse the
  compiled prefill/decode functions."""
  key = (type(model), model.cfg, draft_heads, mesh, tuple(rules))
  if key not in _GENERATORS:
    _GENERATORS[key] = gen.Generator(model, draft_heads=draft_heads, mesh=mesh, rules=rules)
  return _GENERATORS[key]


def _decode_completion(tokenizer, prompt_ids: Sequence[int], ids: Sequence[int]) -> str:
  """The text of ``ids`` as it continues the prompt (SentencePiece drops a leading space when
  decoding a sequence on its own, which would break the indentation of a continuation)."""
  context = list(prompt_ids[-_DECODE_CONTEXT_TOKENS:])
  prefix = tokenizer.decode(context, skip_special_tokens=True)
  full = tokenizer.decode(context + list(ids), skip_special_tokens=True)
  if full.startswith(prefix):
    return full[len(prefix):]
  return tokenizer.decode(list(ids), skip_special_tokens=True)


def encode_prompt(tokenizer, text: str) -> list[int]:
  """``[BOS] + tokens(text)`` (as the training rows start, ``template.encode``)."""
  ids = list(tokenizer.encode(text, add_special_tokens=False))
  bos = getattr(tokenizer, "bos_token_id", None)
  return ([bos] if bos is not None else []) + ids


def split_problems(directory: pathlib.Path, split: str, limit: int) -> list[dict]:
  """The first ``limit`` problems of a run's dataset split, ``{directory}/{split}.problems.jsonl``
  (``config.evaluate.split``)."""
  path = directory / f"{split}.problems.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"config.evaluate.split={split!r}: {path} does not exist")
  return jsonl.read_problems(path)[:limit]


def evaluate_problems(model, params, tokenizer, problems: list[dict], *,
                      prompt_style: str = "alpaca", n_samples: int = 1, temperature: float = 0.0,
                      top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 16,
                      seed: int = 0, ks: Sequence[int] = (1,), workers: int | None = None,
                      timeout_s: float = 10.0, memory_mb: int = 1024, draft_heads: int = 0,
                      stop: Sequence[str] | None = None, test_kinds: Sequence[str] | None = None,
                      continues_prompt: bool | None = None, mesh=None, rules=()) -> dict:
  """Generates ``n_samples`` completions per problem and scores them.

  Args:
    model: ``MTPTransformer`` (head 0 generates; ``draft_heads > 0`` drafts with heads
      ``1 … draft_heads`` and verifies with head 0, same greedy output, faster) or
      ``LlamaForCausalLM``.
    params: its params tree (LoRA already merged).
    tokenizer: ``encode(text, add_special_tokens=False)``, ``decode``, ``bos_token_id``,
      ``eos_token_id``.
    problems: evaluation problems (``wmtp_jax.data.schema``).
    prompt_style: ``alpaca`` | ``completion`` | ``mbpp`` (``benchmarks``).
    stop: stop sequences (default: the prompt style's); generation of a row ends at EOS, a stop
      sequence or ``max_new_tokens``.
    continues_prompt: score ``prompt + completion`` (default: ``prompt_style == "completion"``).
    ks: pass@k values to report (each only if ``n_samples ≥ k``).
    workers, timeout_s, memory_mb: sandbox settings (per program).
    mesh, rules: generate under this mesh / logical-axis rules.

  Returns:
    ``{"summary": {"pass@1": …, "n_problems", "n_samples", "tokens_per_s", …},
    "per_problem": [{"task_id", "n", "c", "pass@k"…}], "samples": [{"task_id", "sample",
    "completion", "passed", "result", "finished_by", "n_tokens"}]}``; GSM8K-style problems add
    ``accuracy`` (fraction of correct samples).
  """
  if n_samples < 1:
    raise ValueError(f"n_samples={n_samples} must be ≥ 1")
  if not problems:
    raise ValueError("no problems to evaluate")
  stop = tuple(benchmarks.stop_sequences(prompt_style) if stop is None else stop)
  continues_prompt = prompt_style == "completion" if continues_prompt is None else continues_prompt
  generator = _generator(model, draft_heads, mesh, rules)
  max_prompt = generator.adapter.max_seq_len - max_new_tokens
  prompts, truncated = [], 0
  for problem in problems:
    ids = encode_prompt(tokenizer, benchmarks.make_prompt(problem, prompt_style))
    if len(ids) > max_prompt > 1:  # keep BOS and the end of the prompt
      ids, truncated = ids[:1] + ids[len(ids) - max_prompt + 1:], truncated + 1
    prompts.append(ids)
  if truncated:
    log.warning("%d prompts longer than max_seq_len - max_new_tokens = %d tokens were cut from "
                "the left", truncated, max_prompt)
  rows = [i for i in range(len(problems)) for _ in range(n_samples)]
  decode_ids = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
  generation = generator.generate(
      params, [prompts[i] for i in rows], max_new_tokens=max_new_tokens,
      eos_id=tokenizer.eos_token_id, sampling=Sampling(temperature, top_p),
      batch_size=batch_size, seed=seed, pad_id=_pad_id(tokenizer), stop=stop,
      decode_fn=decode_ids if stop else None)
  completions = []
  for i, ids in zip(rows, generation.tokens):
    ids = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
    completions.append(benchmarks.postprocess(_decode_completion(tokenizer, prompts[i], ids),
                                              prompt_style, stop=stop))
  started = time.perf_counter()
  verdicts = benchmarks.score([problems[i] for i in rows], completions,
                              continues_prompt=continues_prompt, workers=workers,
                              timeout_s=timeout_s, memory_mb=memory_mb, test_kinds=test_kinds)
  scoring_s = time.perf_counter() - started
  samples = [{"task_id": problems[i]["problem_id"], "sample": j % n_samples,
              "completion": completion, **verdict, "finished_by": finished,
              "n_tokens": len(ids)}
             for j, (i, completion, verdict, finished, ids) in enumerate(zip(
                 rows, completions, verdicts, generation.finished_by, generation.tokens))]
  result = passk.summarize([p["problem_id"] for p in problems], samples, ks,
                           with_accuracy=any(benchmarks.kind_of(p) == "answer" for p in problems))
  stats = generation.stats
  result["summary"].update(
      tokens_per_s=stats["tokens_per_s"], generated_tokens=stats["tokens"],
      generation_s=stats["seconds"], scoring_s=scoring_s, prompt_style=prompt_style,
      temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, draft_heads=draft_heads)
  if draft_heads:
    result["summary"]["mean_accepted_length"] = stats["mean_accepted_length"]
  return result


def _pad_id(tokenizer) -> int:
  pad = getattr(tokenizer, "pad_token_id", None)
  return int(pad if pad is not None else tokenizer.eos_token_id)


# ----------------------------------------------------------------------------------- per head


def head_metrics(model, params, batches) -> dict[str, np.ndarray]:
  """Per-head next-token accuracy and perplexity on validation batches (``tokens``, ``labels``,
  ``attention_mask`` as from ``template.collate``; DESIGN §2 indexing: head ``k`` at position
  ``t`` predicts ``labels[t + 1 + k]``). Returns ``accuracy [n]``, ``perplexity [n]``,
  ``targets [n]`` (valid targets counted). Compiles once per model, logical-axis rules and batch
  shape: repeated calls (every N training steps) with new params reuse it."""
  params = nn.meta.unbox(params)
  rules = tuple(nn.get_logical_axis_rules())
  total = None
  for batch in batches:
    s = np.asarray(_head_sums(model, rules, params, jnp.asarray(batch["tokens"]),
                              jnp.asarray(batch["labels"]), jnp.asarray(batch["attention_mask"])),
                   np.float64)
    total = s if total is None else total + s
  if total is None:
    raise ValueError("head_metrics: no validation batch")
  count = np.maximum(total[:, 2], 1)
  return {"accuracy": total[:, 1] / count, "perplexity": np.exp(total[:, 0] / count),
          "targets": total[:, 2]}


@functools.partial(jax.jit, static_argnames=("model", "rules"))
def _head_sums(model, rules, params, tokens_BxS, labels_BxS, attention_mask_BxS):
  """``[n, 3]``: per head the summed NLL, the correct argmax predictions and the valid targets of
  one batch. ``params`` is traced (not a constant of the compiled function)."""
  with nn.logical_axis_rules(rules):
    logits = model.apply({"params": params}, tokens_BxS, attention_mask_BxS)
  logits_BxSxnxV = logits[:, :, None] if logits.ndim == 3 else logits
  n, seq = logits_BxSxnxV.shape[2], tokens_BxS.shape[1]
  out = []
  for k in range(n):
    target_BxS = labels_BxS[:, 1 + k:]
    valid_BxS = (target_BxS != IGNORE_INDEX) & (attention_mask_BxS[:, 1 + k:] > 0)
    head_BxSxV = logits_BxSxnxV[:, :seq - 1 - k, k].astype(jnp.float32)
    safe_BxS = jnp.where(valid_BxS, target_BxS, 0)
    logp_BxSxV = jax.nn.log_softmax(head_BxSxV, -1)
    nll_BxS = -jnp.take_along_axis(logp_BxSxV, safe_BxS[..., None], -1)[..., 0]
    correct_BxS = jnp.argmax(head_BxSxV, -1) == safe_BxS
    out.append(jnp.stack([jnp.sum(nll_BxS * valid_BxS), jnp.sum(correct_BxS * valid_BxS),
                          jnp.sum(valid_BxS)]))
  return jnp.stack(out)


# ----------------------------------------------------------------------------------- the pipeline


def _model_and_params(config, mesh, rules):
  """``(model, params, source dir or None)`` from ``config.checkpoint`` (its model config when it
  has one, else ``config.model``) or freshly initialised (a warning)."""
  from wmtp_jax.checkpoints import checkpointer as checkpointing, pretrained  # pylint: disable=import-outside-toplevel
  from wmtp_jax.training import mesh as mesh_lib
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
  from wmtp_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
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


def _validation_batches(config, tokenizer, dataset_dir):
  from wmtp_jax.data import jsonl, template  # pylint: disable=import-outside-toplevel
  path = dataset_dir / f"{config.heads_eval.split}.jsonl" if dataset_dir else None
  if path is None or not path.is_file():
    return None
  examples = []
  for record in jsonl.read_jsonl(path):
    if record.get("is_correct", True):
      example = template.encode(record, tokenizer, config.heads_eval.max_len)
      if example is not None:
        examples.append(example)
    if len(examples) == config.heads_eval.batches * config.heads_eval.batch_size:
      break
  size = config.heads_eval.batch_size
  return [template.collate(examples[i:i + size], pad_id=_pad_id(tokenizer),
                           pad_to=config.heads_eval.max_len)
          for i in range(0, len(examples), size)]


def _table(title: str, rows: Mapping[str, Any]) -> str:
  width = max(len(k) for k in rows)
  lines = [title, "-" * max(len(title), width + 14)]
  for key, value in rows.items():
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    lines.append(f"{key:<{width}}  {shown}")
  return "\n".join(lines)


def run(config, workdir) -> dict:
  """The ``evaluate`` pipeline (``configs/evaluate.py``): returns the summary (also written)."""
  from wmtp_jax.training import mesh as mesh_lib, metrics_log  # pylint: disable=import-outside-toplevel
  from wmtp_jax.config import common as config_lib  # pylint: disable=import-outside-toplevel
  from wmtp_jax.data import jsonl  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  config_lib.check_required(config)
  bench = benchmarks.get(config.benchmark)
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
  prompt_style = config.prompt_style or bench.prompt_style
  log.info("evaluating %d %s problems (%s prompts, %d samples each)", len(problems),
           config.benchmark, prompt_style, config.n_samples)
  result = evaluate_problems(
      model, params, tokenizer, problems, prompt_style=prompt_style, n_samples=config.n_samples,
      temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
      batch_size=config.batch_size, seed=config.seed, ks=tuple(config.ks),
      workers=config.sandbox.workers or None, timeout_s=config.sandbox.timeout_s,
      memory_mb=config.sandbox.memory_mb, draft_heads=config.draft_heads,
      test_kinds=tuple(config.test_kinds) or None, mesh=mesh, rules=rules)
  summary = {"benchmark": config.benchmark, "checkpoint": config.checkpoint, **result["summary"]}
  if config.heads_eval.enabled and dataset_dir is not None:
    batches = _validation_batches(config, tokenizer, dataset_dir)
    if batches:
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        heads = head_metrics(model, params, batches)
      for k, (acc, ppl) in enumerate(zip(heads["accuracy"], heads["perplexity"])):
        summary[f"head_accuracy/{k}"] = float(acc)
        summary[f"head_perplexity/{k}"] = float(ppl)
  if jax.process_index() == 0:
    jsonl.write_jsonl(workdir / "samples.jsonl", result["samples"], validate=None)
    jsonl.write_jsonl(workdir / "results.jsonl", result["per_problem"], validate=None)
    with jsonl.atomic_write(workdir / "summary.json") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
      f.write("\n")
    logger = metrics_log.MetricsLogger(workdir, phase=f"evaluate/{config.benchmark}",
                                       total_steps=1)
    logger.write(0, {k.replace("@", "_at_"): float(v) for k, v in summary.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
    logger.close()
    print(_table(f"{config.benchmark} ({len(problems)} problems, {workdir})",
                 {k: v for k, v in summary.items() if k != "checkpoint"}), flush=True)
  return summary
