"""Evaluation: benchmarks (HumanEval, MBPP, CodeContests, GSM8K, the synthetic task), their
prompts in two modes (``prompts``: fine-tuned / base), sandboxed scoring, the unbiased pass@k
estimator, the reference's protocol over temperatures (``protocol``), per-head metrics, the
``evaluate`` pipeline (``evaluate_pipeline``) and base vs fine-tuned after training (``compare``).

* ``evaluate_problems(model, params, tokenizer, problems, …) -> {"summary", "per_problem",
  "samples"}``: generate (``wmtp_jax.decoding.generator``; optionally self-speculative) and score.
* ``run(config, workdir)``: the ``evaluate`` pipeline (``configs/evaluate.py``).
* ``interval.hook(config)``: held-out pass@1 of the policy every ``config.evaluate.every_steps``
  training steps, a hook of ``wmtp_jax.training.loop.run``.
* ``score_completions(problems, completions, …)``: sandboxed verdicts; ``python -m
  wmtp_jax.eval.score``: score a JSONL of completions produced by any model.

The JAX-dependent parts load on first use, so ``score`` stays a light CLI.
"""

from wmtp_jax.eval.benchmarks import BENCHMARKS, extract_answer, load_problems, outputs_match
from wmtp_jax.eval.benchmarks import score as score_completions
from wmtp_jax.eval.passk import DEFAULT_KS, aggregate, pass_at_k
from wmtp_jax.eval.prompts import PROMPT_MODES


def evaluate_problems(model, params, tokenizer, problems, **kwargs) -> dict:
  """See ``wmtp_jax.eval.runner.evaluate_problems``."""
  from wmtp_jax.eval import runner  # pylint: disable=import-outside-toplevel
  return runner.evaluate_problems(model, params, tokenizer, problems, **kwargs)


def run(config, workdir) -> dict:
  """See ``wmtp_jax.eval.evaluate_pipeline.run``."""
  from wmtp_jax.eval import evaluate_pipeline  # pylint: disable=import-outside-toplevel
  return evaluate_pipeline.run(config, workdir)


def head_metrics(model, params, batches) -> dict:
  """See ``wmtp_jax.eval.runner.head_metrics``."""
  from wmtp_jax.eval import runner  # pylint: disable=import-outside-toplevel
  return runner.head_metrics(model, params, batches)


__all__ = ["BENCHMARKS", "DEFAULT_KS", "PROMPT_MODES", "aggregate", "evaluate_problems",
           "extract_answer", "head_metrics", "load_problems", "outputs_match", "pass_at_k", "run",
           "score_completions"]
