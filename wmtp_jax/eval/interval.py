"""Held-out pass@1 during training, every ``config.evaluate.every_steps`` steps (0 = never).

Greedy generation with the current params (LoRA merged) on the first
``config.evaluate.interval_problems`` problems of the run's ``config.evaluate.split``, scored in the
sandbox; logged as ``eval_pass_at_1`` at the step. It is a hook of the train loop (``hook``, which
``wmtp_jax.main`` gives to ``training.loop.run``). The generator is cached by ``runner``, so the
prefill and decode functions compile at the first interval only (the prompts, hence the shapes,
are the same every time).
"""

import functools

from wmtp_jax.eval import benchmarks, prompts, runner
from wmtp_jax.training import hooks, state as state_lib

METRIC = "eval_pass_at_1"  # tensorboard tags allow no "@"


def hook(config) -> hooks.Hook:
  """The train-loop hook of ``config.evaluate``: ``pass_at_1`` every ``every_steps`` steps."""
  return hooks.Hook("interval_eval", config.evaluate.every_steps,
                    functools.partial(pass_at_1, config))


def pass_at_1(config, view: hooks.StepView) -> dict[str, float]:
  """``{"eval_pass_at_1": pass@1}`` of the params of ``view`` (LoRA merged) on the first
  ``config.evaluate.interval_problems`` problems."""
  e = config.evaluate
  context = view.context
  problems = runner.split_problems(view.data.directory, e.split, e.interval_problems)
  result = runner.evaluate_problems(
      context.objective.model, state_lib.merged_params(context, view.state, view.frozen),
      view.data.tokenizer, problems, eos_trained=config.data.train_eos,
      max_new_tokens=benchmarks.generation_length(e.max_new_tokens,
                                                  prompts.benchmark_of(problems)),
      batch_size=e.batch_size, seed=config.seed, timeout_s=e.timeout_s, memory_mb=e.memory_mb,
      mesh=context.mesh, rules=context.rules)
  return {METRIC: result["summary"]["pass@1"]}
