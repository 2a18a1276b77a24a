"""Tests for wmtp_jax.eval.critic: the critic's held-out diagnostics against loops written here,
and the hook of a tiny critic run writing them (metrics.jsonl, the run's final metrics)."""

import json
import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from wmtp_jax import main as main_lib
from wmtp_jax.data import records, template, tokenizer as tokenizer_lib
from wmtp_jax.eval import critic as critic_eval


class TokenValue(nn.Module):
  """A stand-in value model: ``V[b, t] = table[x_t]`` (any values, known to the test)."""
  vocab: int

  @nn.compact
  def __call__(self, tokens_BxS, attention_mask_BxS=None):
    del attention_mask_BxS
    return self.param("table", nn.initializers.normal(1.0), (self.vocab,))[tokens_BxS]


def _config(dataset, **evaluate):
  config = tiny_config("critic", dataset)
  config.evaluate.update(**evaluate)
  return config


def _loop_metrics(dataset, table, split, tok, max_len):
  """Every held-out metric by plain loops over the split's records."""
  store = records.RecordStore(dataset / f"{split}.jsonl")
  by_problem, chance, hits = {}, {1: [], 3: []}, {1: [], 3: []}
  pos_scores, neg_scores = [], []
  for i in range(len(store)):
    rec = store[i]
    ex = template.encode(rec, tok, max_len)
    resp = [t for t in range(len(ex.tokens)) if ex.labels[t] != -100]
    values = [float(table[ex.tokens[t]]) for t in range(len(ex.tokens))]
    mean = sum(values[t] for t in resp) / len(resp)
    by_problem.setdefault(rec["problem_id"], ([], []))[0 if rec["is_correct"] else 1].append(mean)
    (pos_scores if rec["is_correct"] else neg_scores).append(mean)
    mutated = [t for t in resp if ex.span_masks["mutated_mask"][t]]
    if mutated:
      deltas = [(values[t] - values[t - 1], t) for t in resp]  # γ = 1, no terminal reward
      ranked = [t for _, t in sorted(deltas)]
      n, m = len(resp), len(mutated)
      for k in (1, 3):
        hits[k].append(float(any(t in mutated for t in ranked[:k])))
        chance[k].append(1.0 - math.comb(n - m, min(k, n)) / math.comb(n, min(k, n)))
  wins = [1.0 if p > q else 0.5 if p == q else 0.0
          for good, bad in by_problem.values() for p in good for q in bad]
  auc = [1.0 if p > q else 0.5 if p == q else 0.0 for p in pos_scores for q in neg_scores]
  return {"pairs": len(wins), "pairwise_accuracy": np.mean(wins), "auroc": np.mean(auc),
          "hit@1": np.mean(hits[1]), "hit@3": np.mean(hits[3]),
          "hit@1_chance": np.mean(chance[1]), "hit@3_chance": np.mean(chance[3]),
          "localized": len(hits[1]), "records": len(store)}


def test_heldout_metrics_match_loops(small_dataset):
  config = _config(small_dataset)
  tok = tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")
  model = TokenValue(config.model.vocab_size)
  table = np.random.default_rng(0).normal(size=config.model.vocab_size).astype(np.float32)
  params = {"table": jnp.asarray(table)}
  got = critic_eval.critic_metrics(config, model, params, tok, small_dataset)
  want = _loop_metrics(small_dataset, table, "valid", tok, config.data.max_len)
  assert want["pairs"] > 0 and want["localized"] > 0
  for key, value in want.items():
    np.testing.assert_allclose(got[f"heldout/{key}"], value, rtol=1e-5, atol=1e-6, err_msg=key)
  assert -math.inf < got["heldout/explained_variance"] <= 1.0
  first = critic_eval.critic_metrics(_config(small_dataset, max_problems=1), model, params, tok,
                                     small_dataset)
  assert first["heldout/records"] < got["heldout/records"]


def test_split_errors(small_dataset, tmp_path):
  config = _config(small_dataset, split="nope")
  tok = tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")
  model = TokenValue(config.model.vocab_size)
  with pytest.raises(FileNotFoundError, match="config.evaluate.split='nope'"):
    critic_eval.critic_metrics(config, model, {"table": jnp.zeros(512)}, tok, small_dataset)


def test_critic_run_logs_heldout_metrics(small_dataset, tmp_path):
  config = tiny_config("critic", small_dataset)
  config.train.steps = 3
  config.evaluate.every_steps = 2
  report = main_lib.run(config, tmp_path)
  rows = [json.loads(l) for l in (tmp_path / "critic" / "metrics.jsonl").read_text().splitlines()]
  logged = [r["step"] for r in rows if "heldout/auroc" in r]
  assert logged == [2, 3]  # every_steps and the last step
  final = report["critic"]["metrics"]
  for name in ("pairwise_accuracy", "auroc", "explained_variance", "hit@1", "hit@3",
               "hit@1_chance", "hit@3_chance", "pairs"):
    assert f"heldout/{name}" in final, name
  assert final["heldout/hit@1_chance"] < final["heldout/hit@3_chance"] < 1.0
  for side in ("pos", "neg"):
    assert f"value_position_corr_{side}" in final and f"value_mean_{side}" in final
