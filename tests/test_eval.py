"""Evaluation: the pass@k estimator, the benchmark scorers on the real data (HumanEval, MBPP,
GSM8K) and a CodeContests fixture, bad completions and sandbox containment through the scorer,
``evaluate_problems`` on a tiny model and the ``evaluate`` pipeline."""

import gzip
import itertools
import json
import math
import pathlib

import jax
import numpy as np
import pytest

from wmtp_jax import eval as ev
from wmtp_jax.eval import benchmarks, passk, score as score_cli

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"{path} not found: the shared data folder is absent")
  return path


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _read_jsonl(path):
  return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------------- pass@k


def test_pass_at_k_matches_brute_force_over_subsets():
  for n in range(1, 8):
    for c in range(n + 1):
      for k in range(1, n + 1):
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert passk.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
        assert passk.pass_at_k(n, c, k) == pytest.approx(
            1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
  # Large n: the product form stays exact where binomials overflow floats.
  assert passk.pass_at_k(200, 3, 100) == pytest.approx(
      1 - math.comb(197, 100) / math.comb(200, 100), rel=1e-12)
  assert passk.pass_at_k(5, 0, 5) == 0.0 and passk.pass_at_k(5, 5, 1) == 1.0
  assert passk.pass_at_k(10, 1, 1) == pytest.approx(0.1)
  for bad in [(3, 4, 1), (3, 1, 4), (3, 1, 0), (3, -1, 1)]:
    with pytest.raises(ValueError):
      passk.pass_at_k(*bad)


def test_pass_at_k_with_20_samples_matches_the_estimator_by_a_loop():
  """The protocol's n = 20 and k = 1, 5, 10, 20: against ``1 - C(n-c, k) / C(n, k)`` with the
  binomials counted by a loop, per problem and averaged over problems."""
  def comb(n, k):
    count = 1
    for i in range(k):
      count = count * (n - i) // (i + 1)
    return count if 0 <= k <= n else 0

  counts = [(20, c) for c in range(21)] + [(20, 3), (20, 17)]
  for k in (1, 5, 10, 20):
    loop = [1 - comb(n - c, k) / comb(n, k) for n, c in counts]
    for (n, c), want in zip(counts, loop):
      assert passk.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    assert passk.aggregate(counts, ks=(k,))[f"pass@{k}"] == pytest.approx(
        sum(loop) / len(loop), abs=1e-12)


def test_pass_at_k_reported_only_where_every_problem_has_n_ge_k():
  got = passk.aggregate([(10, 3), (5, 5), (20, 0)], ks=(1, 5, 10, 100))
  assert set(got) == {"pass@1", "pass@5"}
  assert got["pass@1"] == pytest.approx((0.3 + 1.0 + 0.0) / 3)
  assert got["pass@5"] == pytest.approx((passk.pass_at_k(10, 3, 5) + 1.0 + 0.0) / 3)
  assert passk.aggregate([], ks=(1,)) == {}
  summary = passk.summarize(["a", "b"], [{"task_id": "a", "passed": True},
                                         {"task_id": "b", "passed": False},
                                         {"task_id": "b", "passed": True}], (1, 2))
  assert summary["summary"]["pass@1"] == pytest.approx(0.75)
  assert "pass@2" not in summary["summary"]
  assert summary["per_problem"][1] == {"task_id": "b", "n": 2, "c": 1, "pass@1": 0.5, "pass@2": 1.0}
  with pytest.raises(ValueError, match="no sample"):
    passk.summarize(["a", "b"], [{"task_id": "a", "passed": True}], (1,))


# ----------------------------------------------------------------------------------- real data


def test_humaneval_canonical_solutions_score_1_and_wrong_ones_0(tmp_path):
  path = _need(DATA / "humaneval" / "HumanEval.jsonl.gz")
  with gzip.open(path, "rt") as f:
    rows = [json.loads(l) for l in f]
  samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": r["task_id"],
                                                 "completion": r["canonical_solution"]}
                                                for r in rows])
  summary = score_cli.main(["--benchmark", "humaneval", "--samples", str(samples), "--out",
                            str(tmp_path / "out"), "--data", str(path)])
  assert summary["pass@1"] == 1.0 and summary["n_problems"] == 164
  assert json.loads((tmp_path / "out" / "summary.json").read_text())["pass@1"] == 1.0
  assert len(_read_jsonl(tmp_path / "out" / "samples.jsonl")) == 164
  assert {r["c"] for r in _read_jsonl(tmp_path / "out" / "results.jsonl")} == {1}
  # Known-wrong completions (two per task: wrong answer, crash) on a subset score 0.
  wrong = [{"task_id": r["task_id"], "completion": c} for r in rows[:12]
           for c in ("    return None\n", "    raise RuntimeError('no')\n")]
  summary = score_cli.main(["--benchmark", "humaneval", "--samples",
                            str(_write_jsonl(tmp_path / "w.jsonl", wrong)), "--out",
                            str(tmp_path / "out2"), "--ks", "1,2,5"])
  assert summary["pass@1"] == 0.0 and summary["pass@2"] == 0.0 and "pass@5" not in summary


def _mbpp_samples(tmp_path, task_ids=None):
  path = _need(DATA / "mbpp" / "mbpp.jsonl")
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  rows = [r for r in rows if task_ids is None or r["task_id"] in task_ids]
  return path, _write_jsonl(tmp_path / "mbpp.jsonl", [{"task_id": r["task_id"],
                                                       "completion": r["code"]} for r in rows])


def test_mbpp_reference_solutions_subset_through_score(tmp_path):
  ids = {367, 927} | set(range(11, 31)) | {601, 974}
  path, samples = _mbpp_samples(tmp_path, ids)
  summary = score_cli.main(["--benchmark", "mbpp", "--data", str(path), "--samples", str(samples),
                            "--out", str(tmp_path / "out")])
  failed = {r["task_id"] for r in _read_jsonl(tmp_path / "out" / "samples.jsonl")
            if not r["passed"]}
  assert failed == {"mbpp/367", "mbpp/927"}
  assert summary["n_passed_samples"] == len(ids) - 2


@pytest.mark.slow
def test_mbpp_reference_solutions_score_972_of_974(tmp_path):
  path, samples = _mbpp_samples(tmp_path)
  summary = score_cli.main(["--benchmark", "mbpp", "--data", str(path), "--samples", str(samples),
                            "--out", str(tmp_path / "out")])
  assert (summary["n_problems"], summary["n_passed_samples"]) == (974, 972)


def test_mbpp_prompt_split_and_sanitized_subset():
  path = _need(DATA / "mbpp" / "mbpp.jsonl")
  test = benchmarks.load_problems("mbpp", path)
  assert len(test) == 500 and test[0]["problem_id"] == "mbpp/11"
  assert test[0]["prompt"].startswith('"""\n') and test[0]["prompt"].endswith('\n"""\n')
  sanitized = benchmarks.load_problems("mbpp", path.parent, sanitized=True)
  assert 0 < len(sanitized) < 427 and all(p["source"] == "mbpp-sanitized" for p in sanitized)


def test_gsm8k_answer_extraction_on_gold_answers_is_100_percent(tmp_path):
  path = _need(DATA / "gsm8k" / "test.jsonl")
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  samples = _write_jsonl(tmp_path / "g.jsonl", [{"task_id": i, "completion": r["answer"]}
                                                for i, r in enumerate(rows)])
  summary = score_cli.main(["--benchmark", "gsm8k", "--data", str(path.parent), "--split", "test",
                            "--samples", str(samples), "--out", str(tmp_path / "out")])
  assert summary["accuracy"] == 1.0 and summary["n_problems"] == 1319
  assert benchmarks.extract_answer("so she pays $1,234.50 in total.") == "1234.50"
  assert benchmarks.extract_answer("x = 3 + 4 = 7\n#### 7") == "7"
  assert benchmarks.extract_answer("no number") is None
  assert benchmarks.answers_match("18.0", "18") and not benchmarks.answers_match("17", "18")


# ----------------------------------------------------------------------------------- CodeContests


CC_PROBLEM = {
    "problem_id": "1000_A. Sum and ratio", "prompt": "Print a+b and a/b; then YES.",
    "source": "codecontests", "time_limit_s": 2.0, "memory_limit_mb": 256,
    "tests": [{"input": "1 2\n", "output": "3 0.5\nYES\n"},
              {"input": "10 4\n", "output": "14 2.5\nYES\n"},
              {"input": "1 3\n", "output": "4 0.333333333\nYES\n"}],
    "test_kinds": ["public", "private", "generated"],
}
CC_CORRECT = "a, b = map(int, input().split())\nprint(a + b, a / b)\nprint('yes')\n"


def test_codecontests_checker_tokens_case_and_float_tolerance():
  assert benchmarks.outputs_match("3  0.5\nyes", "3 0.5\nYES\n")
  assert benchmarks.outputs_match("0.3333339", "0.333333333")  # within 1e-5
  assert not benchmarks.outputs_match("0.3334", "0.333333333")
  assert not benchmarks.outputs_match("3 0.5", "3 0.5 YES")
  assert not benchmarks.outputs_match("NO", "YES")
  assert benchmarks.outputs_match("1e6", "1000000")
  assert not benchmarks.outputs_match("abc", "abd")


def test_codecontests_programs_run_on_every_test():
  programs = [
      CC_CORRECT,
      "a, b = map(int, input().split())\nprint(a + b, round(a / b, 6))\nprint('YES')\n",  # 1e-6 off
      "a, b = map(int, input().split())\nprint(a + b, round(a / b, 2))\nprint('YES')\n",  # too far
      "a, b = map(int, input().split())\nprint(a + b)\n",  # missing tokens
      "print(3, 0.5)\nprint('YES')\n",  # only the first test
  ]
  verdicts = benchmarks.score([CC_PROBLEM] * len(programs), programs, timeout_s=5.0)
  assert [v["passed"] for v in verdicts] == [True, True, False, False, False]
  assert "wrong answer" in verdicts[2]["result"]
  only_public = benchmarks.score([CC_PROBLEM], [programs[4]], test_kinds=("public",))
  assert only_public[0]["passed"]


# ----------------------------------------------------------------------------------- bad input


ASSERT_PROBLEM = {"problem_id": "p", "prompt": "Write f.", "source": "synthetic",
                  "entry_point": "f", "test_code": "assert f(2) == 4\n"}


def test_bad_and_hostile_completions_are_failed_samples(tmp_path):
  marker = tmp_path / "escaped"
  cases = {
      "correct": "def f(x):\n    return x * 2\n",
      "not python": "def f(x) return x *\n",
      "crash": "def f(x):\n    return 1 / 0\n",
      "hang": "def f(x):\n    while True:\n        try:\n            pass\n        except BaseException:\n"
              "            pass\n",
      "flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
      "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                     "os.killpg(os.getpgrp(), signal.SIGKILL)\n",
      "write outside": f"open({str(marker)!r}, 'w').write('x')\ndef f(x):\n    return x * 2\n",
      "memory bomb": "x = bytearray(8 * 2**30)\n",
      "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                   "        pass\n",
      "exit 0 early is honest failure": "import os\ndef f(x):\n    return x\n",
  }
  verdicts = benchmarks.score([ASSERT_PROBLEM] * len(cases), list(cases.values()), timeout_s=3.0,
                              memory_mb=512)
  got = {name: v["passed"] for name, v in zip(cases, verdicts)}
  assert got == {name: name == "correct" for name in cases}, verdicts
  assert not marker.exists()
  assert dict(zip(cases, verdicts))["hang"]["result"] == "timed out"
  assert "SyntaxError" in dict(zip(cases, verdicts))["not python"]["result"]


def test_unknown_task_id_and_benchmark_are_errors_naming_them(tmp_path):
  path = _need(DATA / "humaneval" / "HumanEval.jsonl.gz")
  samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""},
                                                {"task_id": "HumanEval/999", "completion": ""}])
  with pytest.raises(SystemExit, match="HumanEval/999"):
    score_cli.main(["--benchmark", "humaneval", "--data", str(path), "--samples", str(samples),
                    "--out", str(tmp_path / "out")])
  assert not (tmp_path / "out" / "summary.json").exists()
  with pytest.raises(ValueError, match="nope"):
    benchmarks.get("nope")
  with pytest.raises(SystemExit):
    score_cli.main(["--benchmark", "nope", "--samples", str(samples), "--out", str(tmp_path)])


# ----------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  from wmtp_jax.data import synthetic
  return synthetic.write_dataset(tmp_path_factory.mktemp("synthetic"), n_train=60, n_valid=12,
                                 n_test=12, vocab_size=300)


@pytest.fixture(scope="module")
def tiny_model():
  from decoding_helpers import random_params  # pylint: disable=import-outside-toplevel
  from wmtp_jax.models import presets
  from wmtp_jax.models.mtp import MTPConfig, MTPTransformer
  model = MTPTransformer(MTPConfig(**presets.mtp("tiny", max_seq_len=128)))
  return model, random_params(model, seed=0)


def _head_metrics_reference(model, params, batches):
  """``(accuracy [n], perplexity [n])`` by a loop over the targets, in float64."""
  sums = None
  for batch in batches:
    logits = np.asarray(jax.jit(model.apply)({"params": params}, batch["tokens"],
                                             batch["attention_mask"]), np.float64)
    n, seq = logits.shape[2], logits.shape[1]
    sums = np.zeros((n, 3)) if sums is None else sums
    for k, b, t in itertools.product(range(n), range(logits.shape[0]), range(seq)):
      i = t + 1 + k  # the position head k predicts from t
      if i >= seq or batch["labels"][b, i] == -100 or not batch["attention_mask"][b, i]:
        continue
      target, row = batch["labels"][b, i], logits[b, t, k]
      logp = row - row.max() - np.log(np.sum(np.exp(row - row.max())))
      sums[k] += [-logp[target], np.argmax(row) == target, 1]
  return sums[:, 1] / sums[:, 2], np.exp(sums[:, 0] / sums[:, 2])


def test_head_metrics_compile_once_and_follow_the_params(tiny_model):
  """Params are an argument of the compiled function, not constants baked into it: a second call
  with other values of the same shapes reuses the compilation and gives their metrics."""
  from decoding_helpers import random_params  # pylint: disable=import-outside-toplevel
  from wmtp_jax.eval import runner
  model, params = tiny_model
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(2):
    tokens = rng.integers(3, model.cfg.vocab_size, (2, 24)).astype(np.int32)
    labels = np.where(np.arange(24)[None, :] < 6, -100, tokens).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, 18:] = 0
    batches.append({"tokens": tokens, "labels": labels, "attention_mask": mask})
  compiled = runner._head_sums._cache_size()  # pylint: disable=protected-access
  first = runner.head_metrics(model, params, batches)
  assert runner._head_sums._cache_size() == compiled + 1  # pylint: disable=protected-access
  other = random_params(model, seed=7)
  second = runner.head_metrics(model, other, batches)
  assert runner._head_sums._cache_size() == compiled + 1  # pylint: disable=protected-access
  assert np.all(first["perplexity"] != second["perplexity"])
  for p, got in ((params, first), (other, second)):
    accuracy, perplexity = _head_metrics_reference(model, p, batches)
    np.testing.assert_array_equal(got["accuracy"], accuracy)
    np.testing.assert_allclose(got["perplexity"], perplexity, rtol=1e-5)
    # Every head sees labels 6 … 23 of row 0 and 6 … 17 of row 1 (padded), in both batches.
    np.testing.assert_array_equal(got["targets"], [2 * (18 + 12)] * model.cfg.n_future_tokens)


def test_evaluate_problems_on_the_synthetic_task(synthetic_dir, tiny_model):
  from wmtp_jax.data import jsonl, tokenizer
  tok = tokenizer.load_tokenizer(synthetic_dir / "tokenizer")
  problems = jsonl.read_problems(synthetic_dir / "test.problems.jsonl")[:6]
  model, params = tiny_model
  kwargs = dict(max_new_tokens=16, batch_size=8, ks=(1, 2, 5))
  sampled = ev.evaluate_problems(model, params, tok, problems, n_samples=2, temperature=0.8,
                                 top_p=0.95, **kwargs)
  summary = sampled["summary"]
  assert set(summary) >= {"pass@1", "pass@2", "n_problems", "tokens_per_s"}
  assert "pass@5" not in summary
  assert summary["n_problems"] == 6 and summary["n_samples"] == 12
  assert summary["tokens_per_s"] > 0
  assert [s["sample"] for s in sampled["samples"][:2]] == [0, 1]
  assert all(isinstance(s["completion"], str) for s in sampled["samples"])
  assert [p["n"] for p in sampled["per_problem"]] == [2] * 6
  # An untrained model fails; the programs that ran were completion + test_code.
  assert summary["pass@1"] == 0.0


def test_split_problems_limit_zero_is_every_problem(synthetic_dir):
  """``evaluate.max_problems = 0`` (the 7b default) evaluates the whole split."""
  from wmtp_jax.eval import runner
  every = runner.split_problems(synthetic_dir, "test", 0)
  assert len(every) == 12 and runner.split_problems(synthetic_dir, "test", 5) == every[:5]
  with pytest.raises(FileNotFoundError, match="config.evaluate.split='tset'"):
    runner.split_problems(synthetic_dir, "tset", 0)


def test_decoding_stops_with_and_without_a_trained_eos(synthetic_dir, tiny_model, monkeypatch):
  """The generator gets the format's stop sequences and the completion is cut by them: a correct
  program followed by EOS passes with a trained EOS; followed by a failing top-level assert and
  a second definition (no EOS learned) it passes only under the no-EOS stop rules."""
  from wmtp_jax.data import jsonl, tokenizer
  from wmtp_jax.decoding import generator as gen
  from wmtp_jax.eval import prompts, runner
  tok = tokenizer.load_tokenizer(synthetic_dir / "tokenizer")
  problem = jsonl.read_problems(synthetic_dir / "test.problems.jsonl")[0]
  solution = next(r["output"] for r in jsonl.read_jsonl(synthetic_dir / "test.jsonl")
                  if r["problem_id"] == problem["problem_id"] and r["is_correct"])
  junk = "assert f(0) == 'never'\ndef f(*a):\n    return None\n"
  model, params = tiny_model

  def run(continuation, eos_trained, eos=False):
    ids = tok.encode(continuation, add_special_tokens=False) + [tok.eos_token_id] * eos
    seen = {}

    def generate(self, params, prompt_ids, **kwargs):
      seen.update(kwargs)
      return gen.Generation([list(ids)] * len(prompt_ids), ["eos"] * len(prompt_ids),
                            {"tokens": 0, "seconds": 1.0, "tokens_per_s": 0.0})

    monkeypatch.setattr(gen.Generator, "generate", generate)
    result = runner.evaluate_problems(model, params, tok, [problem], eos_trained=eos_trained,
                                      max_new_tokens=8)
    assert seen["stop"] == prompts.Format("synthetic", "finetuned", eos_trained).stop
    assert seen["eos_id"] == tok.eos_token_id
    return result["samples"][0]

  with_eos = run(solution, True, eos=True)
  assert with_eos["passed"] and with_eos["completion"].strip() == solution.strip()
  without = run(solution + junk, False)
  assert without["passed"] and without["completion"].strip() == solution.strip()
  assert not run(solution + junk, True)["passed"]  # the no-EOS rules are what cut it


def test_evaluate_pipeline_writes_results(tmp_path, synthetic_dir, tiny_model, capsys):
  from wmtp_jax.checkpoints import pretrained
  import configs.evaluate as evaluate_config  # pylint: disable=import-outside-toplevel
  model, params = tiny_model
  checkpoint = tmp_path / "converted"
  pretrained.save_params(checkpoint, model.cfg, jax.tree_util.tree_map(np.asarray, params))
  pretrained.copy_tokenizer(synthetic_dir / "tokenizer", checkpoint, model.cfg.vocab_size,
                            where="test")
  config = evaluate_config.get_config()
  config.checkpoint = str(checkpoint)
  config.data = str(synthetic_dir)
  config.limit = 5
  config.max_new_tokens = 16
  config.batch_size = 8
  config.heads_eval.batches = 1
  config.heads_eval.batch_size = 4
  config.heads_eval.max_len = 128
  config.draft_heads = 2
  workdir = tmp_path / "eval"
  summary = ev.run(config, workdir)
  assert summary["n_problems"] == 5 and summary["pass@1"] == 0.0
  assert "mean_accepted_length" in summary
  assert set(f"head_accuracy/{k}" for k in range(4)) <= set(summary)
  assert json.loads((workdir / "summary.json").read_text())["n_problems"] == 5
  assert len(_read_jsonl(workdir / "samples.jsonl")) == 5
  assert len(_read_jsonl(workdir / "results.jsonl")) == 5
  assert list((workdir / "tb").iterdir())
  assert "pass@1" in capsys.readouterr().out
  # Greedy speculative decoding gave the plain greedy completions.
  from wmtp_jax.data import jsonl, tokenizer
  plain = ev.evaluate_problems(model, params, tokenizer.load_tokenizer(synthetic_dir / "tokenizer"),
                               jsonl.read_problems(synthetic_dir / "test.problems.jsonl")[:5],
                               max_new_tokens=16, batch_size=8)
  assert ([s["completion"] for s in plain["samples"]] ==
          [s["completion"] for s in _read_jsonl(workdir / "samples.jsonl")])
