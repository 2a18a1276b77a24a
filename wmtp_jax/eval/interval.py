"""Held-out pass@1 during training, every ``config.evaluate.every_steps`` steps (0 = never).

Greedy generation with the current params (LoRA merged) on the first
``config.evaluate.interval_problems`` problems of the run's ``config.evaluate.split``, scored in the
sandbox; logged as ``eval_pass_at_1`` at the step. The generator is cached by ``runner``, so the
prefill and decode functions compile at the first interval only (the prompts, hence the shapes,
are the same every time).
"""

from wmtp_jax.eval import runner

METRIC = "eval_pass_at_1"  # tensorboard tags allow no "@"


def at_interval(config, context, state, frozen, step: int, data, logger) -> dict[str, float]:
  """``{"eval_pass_at_1": pass@1}`` of ``state`` (also written to ``logger`` at ``step``) when
  ``step`` is a multiple of ``config.evaluate.every_steps``, else ``{}``. ``state`` is only read:
  the generation finishes before the next train step donates it."""
  e = config.evaluate
  if not e.every_steps or step % e.every_steps:
    return {}
  from wmtp_jax.training import state as state_lib  # pylint: disable=import-outside-toplevel  (the loop imports this module)
  problems = runner.split_problems(data.directory, e.split, e.interval_problems)
  result = runner.evaluate_problems(
      context.objective.model, state_lib.merged_params(context, state, frozen), data.tokenizer,
      problems, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=config.seed,
      mesh=context.mesh, rules=context.rules)
  values = {METRIC: result["summary"]["pass@1"]}
  logger.write(step, values)
  return values
