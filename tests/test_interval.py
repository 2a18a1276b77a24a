"""Held-out pass@1 during training (``eval.interval``)."""

import json

from conftest import tiny_config
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.data import jsonl
from wmtp_jax.eval import interval
from wmtp_jax.training import loop


def test_interval_evaluation_logs_pass_at_1_of_the_current_params(small_dataset, tmp_path,
                                                                   monkeypatch):
  """``eval_pass_at_1`` at every ``every_steps`` (LoRA merged); at the last step it is what
  ``evaluate_problems`` gives on the exported model, with the same completions."""
  config = tiny_config("baseline", small_dataset)
  config.lora.enabled = True
  config.lora.settings.rank = 4
  e = config.evaluate
  e.every_steps, e.interval_problems, e.max_new_tokens, e.batch_size = 2, 4, 24, 4
  results = []
  evaluate = interval.runner.evaluate_problems
  monkeypatch.setattr(interval.runner, "evaluate_problems",
                      lambda *a, **k: results.append(evaluate(*a, **k)) or results[-1])
  run = tmp_path / "run"
  last = loop.run(config, run, hooks=[interval.hook(config)])
  rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  logged = {r["step"]: r[interval.METRIC] for r in rows if interval.METRIC in r}
  assert sorted(logged) == [2, 4] and all(0.0 <= v <= 1.0 for v in logged.values())
  assert last[interval.METRIC] == logged[4]
  cfg, params = pretrained.load_pretrained(run / pretrained.RUN_EXPORT_DIR)
  model = pretrained.KINDS[pretrained.kind_of(cfg)][1](cfg)
  problems = jsonl.read_problems(small_dataset / "test.problems.jsonl")[:4]
  exported = evaluate(model, params, pretrained.load_tokenizer(run / pretrained.RUN_EXPORT_DIR),
                      problems, max_new_tokens=24, batch_size=4, seed=config.seed)
  assert exported["summary"]["pass@1"] == logged[4]
  assert ([s["completion"] for s in exported["samples"]]
          == [s["completion"] for s in results[-1]["samples"]])
