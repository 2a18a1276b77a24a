"""Evaluation of a model on benchmark problems: generate, score in the sandbox, pass@k; per-head
next-token metrics.

``evaluate_problems`` generates ``n`` samples per problem at one temperature (the prompts and stop
rules of ``wmtp_jax.eval.prompts``) and scores them; ``wmtp_jax.eval.protocol`` runs it over
temperatures, the training pipelines at an interval (``interval``) and after training
(``compare``), ``evaluate_pipeline`` in the ``evaluate`` pipeline. ``head_metrics`` gives per-head
accuracy and perplexity on ``validation_batches``.
"""

import functools
import logging
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.decoding import generator as gen
from wmtp_jax.decoding.sampling import Sampling
from wmtp_jax.data import jsonl, template
from wmtp_jax.eval import benchmarks, passk, prompts

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
  """The first ``limit`` problems (0 = all) of a run's dataset split,
  ``{directory}/{split}.problems.jsonl`` (``config.evaluate.split``)."""
  path = directory / f"{split}.problems.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"config.evaluate.split={split!r}: {path} does not exist")
  problems = jsonl.read_problems(path)
  return problems[:limit] if limit else problems


def evaluate_problems(model, params, tokenizer, problems: list[dict], *,
                      benchmark: str | None = None, prompt_mode: str = "finetuned",
                      eos_trained: bool = True, n_samples: int = 1, temperature: float = 0.0,
                      top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 16,
                      seed: int = 0, ks: Sequence[int] = (1,), workers: int | None = None,
                      timeout_s: float = 10.0, memory_mb: int = 1024, draft_heads: int = 0,
                      test_kinds: Sequence[str] | None = None, mesh=None, rules=()) -> dict:
  """Generates ``n_samples`` completions per problem and scores them.

  Args:
    model: ``MTPTransformer`` (head 0 generates; ``draft_heads > 0`` drafts with heads
      ``1 … draft_heads`` and verifies with head 0, same greedy output, faster) or
      ``LlamaForCausalLM``.
    params: its params tree (LoRA already merged).
    tokenizer: ``encode(text, add_special_tokens=False)``, ``decode``, ``bos_token_id``,
      ``eos_token_id``.
    problems: evaluation problems (``wmtp_jax.data.schema``).
    benchmark: how the problems are prompted and read (``prompts.Format``); default: their
      ``source``.
    prompt_mode: ``finetuned`` (the training template) | ``base`` (the raw harness prompt).
    eos_trained: whether the model learned to emit EOS (``data.train_eos``); a row ends at EOS,
      a stop sequence of the format or ``max_new_tokens``.
    temperature, top_p: 0 is greedy; else temperature + nucleus sampling.
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
  fmt = prompts.Format(benchmark or prompts.benchmark_of(problems), prompt_mode, eos_trained)
  generator = _generator(model, draft_heads, mesh, rules)
  max_prompt = generator.adapter.max_seq_len - max_new_tokens
  prompt_ids, truncated = [], 0
  for problem in problems:
    ids = encode_prompt(tokenizer, fmt.prompt(problem))
    if len(ids) > max_prompt > 1:  # keep BOS and the end of the prompt
      ids, truncated = ids[:1] + ids[len(ids) - max_prompt + 1:], truncated + 1
    prompt_ids.append(ids)
  if truncated:
    log.warning("%d prompts longer than max_seq_len - max_new_tokens = %d tokens were cut from "
                "the left", truncated, max_prompt)
  rows = [i for i in range(len(problems)) for _ in range(n_samples)]
  decode_ids = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
  generation = generator.generate(
      params, [prompt_ids[i] for i in rows], max_new_tokens=max_new_tokens,
      eos_id=tokenizer.eos_token_id, sampling=Sampling(temperature, top_p),
      batch_size=batch_size, seed=seed, pad_id=template.pad_id(tokenizer), stop=fmt.stop,
      decode_fn=decode_ids)
  completions = []
  for i, ids in zip(rows, generation.tokens):
    ids = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
    completions.append(fmt.completion(_decode_completion(tokenizer, prompt_ids[i], ids),
                                      problems[i]))
  started = time.perf_counter()
  verdicts = benchmarks.score([problems[i] for i in rows], completions,
                              continues_prompt=fmt.continues_prompt, workers=workers,
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
      generation_s=stats["seconds"], scoring_s=scoring_s, prompt_mode=prompt_mode,
      temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, draft_heads=draft_heads)
  if draft_heads:
    result["summary"]["mean_accepted_length"] = stats["mean_accepted_length"]
  return result


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


def validation_batches(path: pathlib.Path, tokenizer, *, n_batches: int, batch_size: int,
                       max_len: int, add_eos: bool = True) -> list[dict]:
  """Up to ``n_batches`` batches of ``batch_size`` correct records of the records file ``path``
  (``template.encode``, rows padded to ``max_len``), for ``head_metrics``; [] without the
  file."""
  if not path.is_file():
    return []
  examples = []
  for record in jsonl.read_jsonl(path):
    if record.get("is_correct", True):
      example = template.encode(record, tokenizer, max_len, add_eos=add_eos)
      if example is not None:
        examples.append(example)
    if len(examples) == n_batches * batch_size:
      break
  pad_id = template.pad_id(tokenizer)
  return [template.collate(examples[i:i + batch_size], pad_id=pad_id, pad_to=max_len)
          for i in range(0, len(examples), batch_size)]


def head_summary(model, params, batches, mesh, rules) -> dict[str, float]:
  """``{"head_accuracy/<k>", "head_perplexity/<k>"}`` of ``head_metrics`` under ``mesh`` /
  ``rules`` ({} without batches)."""
  if not batches:
    return {}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    heads = head_metrics(model, params, batches)
  out = {}
  for k, (accuracy, perplexity) in enumerate(zip(heads["accuracy"], heads["perplexity"])):
    out[f"head_accuracy/{k}"] = float(accuracy)
    out[f"head_perplexity/{k}"] = float(perplexity)
  return out
