"""After training a policy: held-out pass@1 of the trained model next to the untrained one.

Greedy generation on ``config.evaluate.split`` problems of the run's dataset (the synthetic task's
held-out problems by default), programs scored in the sandbox. The untrained model is the
model the run started from (``config.init.checkpoint`` or the seeded random initialisation).
"""

import logging
import pathlib

from wmtp_jax.training import init as init_lib, mesh as mesh_lib
from wmtp_jax import objectives
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.data import run_data
from wmtp_jax.eval import runner

log = logging.getLogger("wmtp_jax")


def trained_vs_untrained(config, run_dir: pathlib.Path) -> dict:
  """``{"untrained": summary, "trained": summary}`` (``pass@1``, ``n_problems``, …)."""
  e = config.evaluate
  objective = objectives.build(config)
  problems = runner.split_problems(run_data.dataset_dir(config.data), e.split, e.max_problems)
  tokenizer = pretrained.load_tokenizer(run_dir / pretrained.RUN_EXPORT_DIR)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  _, trained = pretrained.load_pretrained(run_dir / pretrained.RUN_EXPORT_DIR)
  untrained = init_lib.initial_params(config, objective, mesh, rules)
  report = {}
  for name, params in (("untrained", untrained), ("trained", trained)):
    result = runner.evaluate_problems(objective.model, params, tokenizer, problems,
                                      max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                                      seed=config.seed)
    report[name] = result["summary"]
  print(f"held-out pass@1 on {len(problems)} {e.split} problems: untrained "
        f"{report['untrained']['pass@1']:.3f}, trained {report['trained']['pass@1']:.3f}")
  return report
