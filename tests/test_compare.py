"""Base vs fine-tuned after training (``eval.compare``): both models' protocol summaries and
per-head accuracy, the per-problem file whose counts give back the summaries' pass@k, and the
settings checked before training."""

import json

import jax
import numpy as np
import pytest

from conftest import tiny_config
from decoding_helpers import random_params
from wmtp_jax import objectives
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.eval import compare, passk


def test_base_vs_finetuned_writes_per_problem_results(small_dataset, tmp_path):
  """The run's export stands in for a trained model (other random weights than the base), so
  that no training step compiles here."""
  config = tiny_config("baseline", small_dataset)
  config.init.base = ""  # the seeded random initialisation is the base here
  e = config.evaluate
  e.max_problems, e.n_samples, e.temperatures, e.ks = 3, 2, (0.7, 1.0), (1, 2)
  e.max_new_tokens, e.batch_size = 12, 8
  run = tmp_path / "baseline"
  model = objectives.build(config).model
  export = run / pretrained.RUN_EXPORT_DIR
  pretrained.save_params(export, model.cfg,
                         jax.tree_util.tree_map(np.asarray, random_params(model, seed=1)))
  pretrained.copy_tokenizer(small_dataset / "tokenizer", export, model.cfg.vocab_size,
                            where="test")
  report = compare.base_vs_finetuned(config, run)
  rows = [json.loads(l) for l in (run / "eval" / "problems.jsonl").read_text().splitlines()]
  assert report["problems_file"] == str(run / "eval" / "problems.jsonl")
  assert json.loads((run / "eval" / "summary.json").read_text()) == report
  assert [(r["model"], r["seed"]) for r in rows] == [("base", 0)] * 3 + [("finetuned", 0)] * 3
  for name in compare.MODELS:
    summary, mine = report[name], [r for r in rows if r["model"] == name]
    assert summary["n_problems"] == 3 and summary["prompt_mode"] == "finetuned"
    assert summary["temperature"] in (0.7, 1.0)
    for temperature in ("0.7", "1"):
      counts = [(r["n"], r["correct"][temperature]) for r in mine]
      assert passk.aggregate(counts, (1, 2)) == pytest.approx(
          {k: summary["by_temperature"][temperature][k] for k in ("pass@1", "pass@2")})
    assert summary["greedy_pass@1"] == pytest.approx(
        sum(r["greedy_passed"] for r in mine) / 3)
    for k in range(config.model.n_future_tokens):
      assert 0.0 <= summary[f"head_accuracy/{k}"] <= 1.0
      assert summary[f"head_perplexity/{k}"] >= 1.0
  samples = (run / "eval" / "samples.jsonl").read_text().splitlines()
  assert len(samples) == 2 * 3 * (2 * 2 + 1)


def test_evaluation_settings_are_checked_before_training():
  from wmtp_jax.config import common  # pylint: disable=import-outside-toplevel
  compare.check_config(common.load("baseline", "tiny"))
  for overrides, message in (
      ({"base_prompt_mode": "raw"}, "config.evaluate.base_prompt_mode='raw'"),
      ({"temperatures": (0.0, 0.8)}, "config.evaluate: temperatures="),
      ({"temperatures": (), "greedy": False}, "config.evaluate: nothing to evaluate")):
    bad = common.load("baseline", "tiny")
    bad.evaluate.update(overrides)
    with pytest.raises(ValueError, match=message):
      compare.check_config(bad)
    bad.evaluate.enabled = False
    compare.check_config(bad)  # not evaluated: not checked
