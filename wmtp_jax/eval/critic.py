"""Held-out diagnostics of a critic (value model), during and after its training (issue 13 §4).

Every record of the first ``config.evaluate.max_problems`` problems (sorted ids; 0 = all) of the
run's ``config.evaluate.split`` (the critic configs: ``valid``) is scored once by the critic
(deterministic, LoRA merged); from the values ``V [N, S]`` of those ``N`` records:

* ``heldout/pairwise_accuracy``: over ALL (correct, incorrect) pairs of the same problem (every
  combination, ``heldout/pairs`` of them), the share whose correct record has the larger mean
  response value (``weighting.diagnostics.pairwise_accuracy``; ties count half);
* ``heldout/auroc``: correct vs incorrect records by mean response value (``diagnostics.auroc``);
* ``heldout/explained_variance``: of the values against the Monte-Carlo return (the record's
  reward R, 1 correct / 0 incorrect, at every response token; ``weighting.explained_variance``).
  A pairwise-only critic learns values up to an offset and a scale, so its figure may be ≤ 0;
* ``heldout/hit@k`` (k = 1, 3) with ``heldout/hit@k_chance`` beside it: on the incorrect records
  with a mutated span, whether one of the ``k`` most negative TD errors ``δ_t = γ·V_t − V_{t−1}``
  (no terminal reward) falls on a mutated token (``diagnostics.localization_hits``), and the
  probability of that for ``k`` response tokens drawn at random. ``heldout/localized`` counts
  those records. Data without ground-truth spans (real datasets) has no such metrics: they are
  left out when no record of the split carries spans.

``hook(config)`` runs this every ``config.evaluate.every_steps`` steps and after the last one
(``training.hooks``); ``critic_metrics`` scores any value model's params.
"""

import functools

import flax.linen as nn
import jax
import numpy as np

from wmtp_jax import weighting
from wmtp_jax.data import records, schema, template
from wmtp_jax.objectives import base
from wmtp_jax.training import hooks, state as state_lib
from wmtp_jax.weighting import diagnostics

PREFIX = "heldout/"
KS = (1, 3)


def hook(config) -> hooks.Hook:
  """The train-loop hook of a critic run: ``critic_metrics`` every ``config.evaluate.every_steps``
  steps and after the last step."""
  return hooks.Hook("critic_heldout", config.evaluate.every_steps,
                    functools.partial(_of_view, config), at_end=True)


def _of_view(config, view: hooks.StepView) -> dict[str, float]:
  context = view.context
  return critic_metrics(config, context.objective.model,
                        state_lib.merged_params(context, view.state, view.frozen),
                        view.data.tokenizer, view.data.directory, rules=context.rules)


def heldout_records(directory, split: str, max_problems: int) -> tuple[list[dict], list[str]]:
  """``(records, problem_ids)``: every record of the first ``max_problems`` problems (sorted ids,
  0 = all) of ``directory/<split>.jsonl``, problem by problem."""
  path = directory / f"{split}.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"config.evaluate.split={split!r}: {path} does not exist")
  store = records.RecordStore(path)
  index = store.meta["problem_index_map"]
  ids = sorted(index)[:max_problems or None]
  chosen = [(pid, i) for pid in ids
            for i in sorted([*index[pid]["correct_indices"], *index[pid]["incorrect_indices"]])]
  return [store[i] for _, i in chosen], [pid for pid, _ in chosen]


@functools.partial(jax.jit, static_argnames=("model", "rules"))
def _values(model, rules, params, tokens_BxS, attention_mask_BxS):
  with nn.logical_axis_rules(rules):
    return model.apply({"params": params}, tokens_BxS, attention_mask_BxS)


def score_records(model, params, tokenizer, recs, *, max_len: int, batch_size: int,
                  bucket_lengths=None, rules=()):
  """Values of ``recs`` in batches of similar lengths (each padded to its bucket,
  ``template.padded_length``): ``(values, mask, mutated) [N, max_len]`` float32 / bool
  (``mutated`` is None when no record carries spans) and the indices of the ``N`` kept records,
  in the rows' order (a record too long for ``max_len`` is truncated, one without room for a
  response dropped)."""
  examples = [(i, template.encode(r, tokenizer, max_len)) for i, r in enumerate(recs)]
  kept = sorted([(i, e) for i, e in examples if e is not None], key=lambda ie: len(ie[1]))
  values, masks, mutated = [], [], []
  widen = lambda x: np.pad(x, ((0, 0), (0, max_len - x.shape[1])))
  for start in range(0, len(kept), batch_size):  # by length: short batches stay short
    batch = template.collate([e for _, e in kept[start:start + batch_size]],
                             pad_id=tokenizer.pad_token_id, bucket_lengths=bucket_lengths)
    values.append(widen(np.asarray(_values(model, rules, params, batch["tokens"],
                                           batch["attention_mask"]), np.float32)))
    masks.append(widen(np.asarray(base.response_mask(batch))))
    mutated.append(None if "mutated_mask" not in batch else widen(batch["mutated_mask"]))
  spans = all(m is not None for m in mutated) and bool(mutated)
  return (np.concatenate(values), np.concatenate(masks),
          np.concatenate(mutated).astype(bool) if spans else None, [i for i, _ in kept])


def critic_metrics(config, model, params, tokenizer, directory, *, rules=()) -> dict[str, float]:
  """The ``heldout/…`` metrics (module docstring) of ``params`` on the run's held-out split."""
  split = config.evaluate.split
  recs, problem_ids = heldout_records(directory, split, config.evaluate.max_problems)
  has_spans = [any(field in r for field in schema.SPAN_FIELDS) for r in recs]
  if any(has_spans) and not all(has_spans):
    raise ValueError(f"{directory}/{split}.jsonl: {sum(has_spans)} of "
                     f"{len(recs)} held-out records carry ground-truth spans; the span metrics "
                     f"need all or none")
  values, mask, mutated, kept = score_records(
      model, params, tokenizer, recs, max_len=config.data.max_len,
      batch_size=config.evaluate.batch_size,
      bucket_lengths=tuple(config.data.bucket_lengths) or None, rules=rules)
  correct = np.asarray([recs[i]["is_correct"] for i in kept], bool)
  means = np.asarray(diagnostics.mean_response_value(values, mask))
  pos, neg = _pairs([problem_ids[i] for i in kept], correct)
  ones = np.ones((len(pos), 1), np.float32)
  pairwise = diagnostics.pairwise_accuracy(means[pos][:, None], ones, means[neg][:, None], ones)
  rewards_NxS = np.broadcast_to(correct[:, None], values.shape).astype(np.float32)
  out = {"pairwise_accuracy": pairwise["accuracy"], "pairs": pairwise["count"],
         "auroc": diagnostics.auroc(means, correct)["auroc"],
         "explained_variance": weighting.explained_variance(values, rewards_NxS, mask),
         "records": len(kept)}
  if mutated is not None:
    td = weighting.td_errors(values, mask, gamma=config.critic_loss.gamma)
    hits = diagnostics.localization_hits(td, mask, mutated, ks=KS)
    out["localized"] = hits["count"]
    for k in KS:
      out[f"hit@{k}"], out[f"hit@{k}_chance"] = hits[f"hit@{k}"], hits[f"chance@{k}"]
  return {PREFIX + k: float(v) for k, v in out.items()}


def _pairs(problem_ids: list[str], correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(pos, neg)`` row indices of every (correct, incorrect) pair of the same problem."""
  by_problem: dict[str, tuple[list[int], list[int]]] = {}
  for row, (pid, ok) in enumerate(zip(problem_ids, correct)):
    by_problem.setdefault(pid, ([], []))[0 if ok else 1].append(row)
  pairs = [(p, q) for good, bad in by_problem.values() for p in good for q in bad]
  if not pairs:
    raise ValueError("critic held-out metrics: the held-out split has no problem with both a "
                     "correct and an incorrect record")
  pos, neg = zip(*pairs)
  return np.asarray(pos), np.asarray(neg)
