"""The evaluation protocol (``eval.protocol``): the best temperature by pass@1, per-problem counts
per temperature and greedy verdicts, on scripted verdicts; and on a tiny model (sampling only, one
compilation), that the counts are those of the samples written."""

import pytest

from wmtp_jax.eval import passk, protocol

PROBLEMS = [{"problem_id": f"p{i}", "source": "synthetic", "prompt": "x", "test_code": "pass"}
            for i in range(3)]
# Passing samples per problem and temperature (of n = 4), and the greedy verdicts.
CORRECT = {0.2: [1, 0, 4], 0.8: [2, 1, 3]}
GREEDY = [True, False, True]


def _scripted(model, params, tokenizer, problems, *, n_samples=1, temperature=0.0, ks=(1,),
              **kwargs):
  """``runner.evaluate_problems`` with the verdicts of ``CORRECT`` / ``GREEDY``."""
  del model, params, tokenizer, kwargs
  passed = ([[j < c for j in range(n_samples)] for c in CORRECT[temperature]] if temperature
            else [[g] for g in GREEDY])
  samples = [{"task_id": p["problem_id"], "sample": j, "passed": ok}
             for p, row in zip(problems, passed) for j, ok in enumerate(row)]
  return passk.summarize([p["problem_id"] for p in problems], samples, ks)


def test_best_temperature_per_problem_counts_and_greedy(monkeypatch):
  monkeypatch.setattr(protocol.runner, "evaluate_problems", _scripted)
  settings = protocol.Settings(n_samples=4, temperatures=(0.2, 0.8), ks=(1, 2, 4, 5))
  result = protocol.evaluate(None, None, None, PROBLEMS, settings)
  summary = result["summary"]
  # pass@1 is the mean of c / n: 5/12 at T=0.2, 6/12 at T=0.8.
  assert summary["by_temperature"]["0.2"]["pass@1"] == pytest.approx(5 / 12)
  assert summary["by_temperature"]["0.8"]["pass@1"] == pytest.approx(6 / 12)
  assert summary["temperature"] == 0.8
  for k in (1, 2, 4):
    want = sum(passk.pass_at_k(4, c, k) for c in CORRECT[0.8]) / 3
    assert summary[f"pass@{k}"] == pytest.approx(want)
  assert "pass@5" not in summary  # n = 4 < 5
  assert summary["greedy_pass@1"] == pytest.approx(2 / 3)
  assert (summary["n_problems"], summary["n_samples"]) == (3, 4)
  assert result["problems"] == [
      {"problem_id": f"p{i}", "n": 4, "correct": {"0.2": CORRECT[0.2][i], "0.8": CORRECT[0.8][i]},
       "greedy_passed": GREEDY[i]} for i in range(3)]
  assert len(result["samples"]) == 3 * 4 * 2 + 3
  assert {s["temperature"] for s in result["samples"]} == {0.0, 0.2, 0.8}


def test_greedy_only_and_bad_settings(monkeypatch):
  monkeypatch.setattr(protocol.runner, "evaluate_problems", _scripted)
  result = protocol.evaluate(None, None, None, PROBLEMS, protocol.Settings())
  assert result["summary"]["pass@1"] == result["summary"]["greedy_pass@1"] == pytest.approx(2 / 3)
  assert "temperature" not in result["summary"] and result["summary"]["n_samples"] == 1
  assert result["problems"] == [{"problem_id": f"p{i}", "greedy_passed": GREEDY[i]}
                                for i in range(3)]
  with pytest.raises(ValueError, match="must be > 0"):
    protocol.Settings(temperatures=(0.0, 0.8))
  with pytest.raises(ValueError, match="nothing to evaluate"):
    protocol.Settings(greedy=False)


def test_counts_are_those_of_the_samples_on_a_tiny_model(small_dataset):
  from decoding_helpers import random_params  # pylint: disable=import-outside-toplevel
  from wmtp_jax.data import jsonl, tokenizer
  from wmtp_jax.models import presets
  from wmtp_jax.models.mtp import MTPConfig, MTPTransformer
  directory = small_dataset
  problems = jsonl.read_problems(directory / "test.problems.jsonl")[:4]
  model = MTPTransformer(MTPConfig(**presets.mtp("tiny", max_seq_len=128)))
  settings = protocol.Settings(n_samples=3, temperatures=(0.5, 1.0), top_p=0.95, ks=(1, 3),
                               greedy=False, max_new_tokens=8, batch_size=8)
  result = protocol.evaluate(model, random_params(model, seed=0),
                             tokenizer.load_tokenizer(directory / "tokenizer"), problems, settings)
  for row in result["problems"]:
    for temperature in ("0.5", "1"):
      mine = [s for s in result["samples"]
              if s["task_id"] == row["problem_id"] and f"{s['temperature']:g}" == temperature]
      assert len(mine) == row["n"] == 3 and row["correct"][temperature] == sum(
          s["passed"] for s in mine)
    assert "greedy_passed" not in row
  assert result["summary"]["temperature"] in (0.5, 1.0)
