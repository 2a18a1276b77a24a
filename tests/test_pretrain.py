"""Tests of the pre-training corpus (data.synthetic.corpus), configs/pretrain.py and the pretrain
objective (parity with a numpy loop, padding and the template header masked)."""

import jax
import numpy as np
import pytest

from wmtp_jax import IGNORE_INDEX, objectives
from wmtp_jax.config import common as config_lib
from wmtp_jax.data import synthetic, template, tokenizer as tokenizer_lib
from wmtp_jax.data.synthetic import corpus

from conftest import SMALL_DATA


def test_corpus_problems_are_disjoint_from_the_datasets_splits():
  problems = corpus.corpus_problems(seed=0, n_train=60, n_valid=10, dataset_params=SMALL_DATA)
  assert [len(problems["train"]), len(problems["valid"])] == [60, 10]
  keys = {split: {p.key for p in ps} for split, ps in problems.items()}
  assert not keys["train"] & keys["valid"]
  pretrain_keys = keys["train"] | keys["valid"]
  sizes = {"train": SMALL_DATA["n_train"], "valid": SMALL_DATA["n_valid"],
           "test": SMALL_DATA["n_test"]}
  for split, n in sizes.items():
    dataset_keys = {p.key for p in synthetic.generate_problems(n, seed=SMALL_DATA["seed"],
                                                               split=split)}
    assert len(dataset_keys) == n and not dataset_keys & pretrain_keys, split
  # Pre-training keys hash to train (never a held-out problem of any dataset).
  assert {synthetic.split_of(k) for k in pretrain_keys} == {"train"}
  # Excluding the train keys is what keeps them out: without it some would be drawn.
  unexcluded = synthetic.generate_problems(300, seed=0, split="pretrain")
  train_keys = {p.key for p in synthetic.generate_problems(300, seed=0, split="train")}
  assert {p.key for p in unexcluded} & train_keys


def test_documents_are_commented_solutions_in_plain_format():
  (problem,) = corpus.corpus_problems(seed=0, n_train=1, n_valid=0,
                                      dataset_params=SMALL_DATA)["train"]
  docs = corpus.documents(problem)
  assert len(docs) == len(problem.solutions) > 1
  for d, code in zip(docs, problem.solutions):
    assert d["output"] == "# " + problem.instruction + "\n" + code
    assert d["instruction"] == d["input"] == "" and d["is_correct"] and d["key"] == problem.key
    assert d["format"] == "plain" and template.format_prompt(d) == ""
    assert "### " not in d["output"]  # no trace of the fine-tuning prompt


def test_pretrain_config_variants():
  for kind in ("mtp", "llama"):
    c = config_lib.load("pretrain", kind)
    assert (c.pipeline, c.variant, c.model_kind, c.init.base) == ("pretrain", kind, kind, "")
  assert "n_future_tokens" in config_lib.load("pretrain", "mtp").model
  for bad in ("", "7b,mtp", "mtp,llama", "tiny"):
    with pytest.raises(ValueError, match="configs/pretrain.py"):
      config_lib.load("pretrain", bad)


def _tiny_pretrain(kind: str):
  c = config_lib.load("pretrain", kind)
  shrink = (dict(dim=32, n_layers=3, n_heads=2, n_kv_heads=2, multiple_of=16, n_future_tokens=2)
            if kind == "mtp" else
            dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=2))
  c.model.update(shrink)
  return c


def _batch(small_dataset):
  """Two corpus documents of different lengths, encoded by the data template and padded."""
  tok = tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")
  (problem,) = corpus.corpus_problems(seed=0, n_train=1, n_valid=0,
                                      dataset_params=SMALL_DATA)["train"]
  docs = corpus.documents(problem)
  examples = [template.encode(d, tok, 256) for d in (docs[0], docs[-1])]
  batch = template.collate(examples, pad_id=tok.pad_token_id)
  assert (batch["attention_mask"] == 0).any()  # padding
  # Plain documents: no prompt; every token but BOS is a target (the closing EOS included).
  for row, doc in enumerate((docs[0], docs[-1])):
    n = int(batch["lengths"][row])
    assert batch["tokens"][row, 0] == tok.bos_token_id and batch["tokens"][row, n - 1] == \
        tok.eos_token_id
    assert tok.decode(batch["tokens"][row, 1:n - 1]) == doc["output"]
    assert batch["labels"][row, 0] == IGNORE_INDEX
    assert (batch["labels"][row, 1:n] == batch["tokens"][row, 1:n]).all()
  return batch


def _loop_loss(logits, batch, n: int) -> float:
  """The mean over heads of each head's mean CE over its valid targets (plain loops)."""
  logits = np.asarray(logits, np.float64)
  tokens, labels, mask = batch["tokens"], batch["labels"], batch["attention_mask"]
  per_head = []
  for k in range(n):
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
      for t in range(tokens.shape[1]):
        j = t + 1 + k
        if j >= tokens.shape[1] or labels[b, j] == IGNORE_INDEX or not mask[b, j]:
          continue
        row = logits[b, t, k]
        log_z = row.max() + np.log(np.exp(row - row.max()).sum())
        total += log_z - row[labels[b, j]]
        count += 1
    per_head.append(total / count)
  return float(np.mean(per_head))


@pytest.mark.parametrize("kind", ["mtp", "llama"])
def test_pretrain_objective_matches_a_numpy_loop(kind, small_dataset):
  config = _tiny_pretrain(kind)
  objective = objectives.build(config)
  assert objective.samples == "all" and objective.name == "pretrain"
  batch = _batch(small_dataset)
  params = objective.model.init(jax.random.key(0), batch["tokens"][:, :8])["params"]
  apply = lambda p, *a, **k: objective.model.apply({"params": p}, *a, **k)
  loss, _ = jax.jit(lambda p, b: objective.loss(p, apply, {}, b, objective.normalizers(b), {},
                                                None))(params, batch)
  logits = apply(params, batch["tokens"], batch["attention_mask"])
  n = config.model.n_future_tokens if kind == "mtp" else 1
  logits = logits if kind == "mtp" else logits[:, :, None, :]
  np.testing.assert_allclose(float(loss), _loop_loss(logits, batch, n), rtol=1e-5)


def test_pretrain_objective_rejects_an_unknown_kind():
  config = config_lib.load("pretrain", "mtp")
  config.model_kind = "value"
  with pytest.raises(ValueError, match="config.model_kind='value'"):
    objectives.build(config)
