"""After training a policy: the base model next to the fine-tuned one on held-out problems.

The base is the model the run started from (``config.init.checkpoint``, the tiny pretrained base
of ``config.init.base``, or the seeded random initialisation); the fine-tuned model is the run's
export. Both run the protocol of ``wmtp_jax.eval.protocol`` on the first
``config.evaluate.max_problems`` problems of the dataset's ``config.evaluate.split``: held-out
pass@k (unbiased) from ``n_samples`` samples at each of ``temperatures`` with ``top_p`` (the best
pass@1 kept) and greedy pass@1; and per-head next-token accuracy / perplexity on
``config.data.val_batches`` batches of the validation split. The fine-tuned model reads the
training template's prompt; the base reads ``config.evaluate.base_prompt_mode``'s
(``wmtp_jax.eval.prompts``).

Files in the run directory (``WORKDIR/<pipeline>/eval/``):

* ``problems.jsonl``: one line per model and problem, for paired statistics over problems and
  seeds: ``{"model": "base" | "finetuned", "seed": config.seed, "problem_id", "n" (samples per
  temperature), "correct": {"<T>": passing samples at T}, "greedy_passed": bool}``;
* ``samples.jsonl``: every sample (``model``, ``task_id``, ``temperature``, ``completion``,
  ``passed``, ``result`` …);
* ``summary.json``: what ``base_vs_finetuned`` returns (report.json's ``evaluation``).
"""

import json
import pathlib

import flax.linen as nn
import jax

from wmtp_jax import objectives
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.data import jsonl, run_data
from wmtp_jax.eval import benchmarks, evaluate_pipeline, prompts, protocol, runner
from wmtp_jax.training import init as init_lib, mesh as mesh_lib

EVAL_DIR = "eval"
MODELS = ("base", "finetuned")


def check_config(config) -> None:
  """The settings of ``config.evaluate`` are usable (checked before training, not after it): an
  error naming the key otherwise."""
  e = config.evaluate
  if not e.enabled:
    return
  prompts.check_mode(e.base_prompt_mode, "config.evaluate.base_prompt_mode")
  try:
    evaluate_pipeline.settings(e, max_new_tokens=1)
  except ValueError as error:
    raise ValueError(f"config.evaluate: {error}") from error


def base_vs_finetuned(config, run_dir: pathlib.Path) -> dict:
  """``{"base": summary, "finetuned": summary, "problems_file": path}``; each summary holds
  ``pass@k``, ``temperature``, ``by_temperature``, ``greedy_pass@1``, ``head_accuracy/<k>``,
  ``head_perplexity/<k>``, ``n_problems``, ``prompt_mode`` (module docstring)."""
  e, d = config.evaluate, config.data
  objective = objectives.build(config)
  dataset_dir = run_data.dataset_dir(d)
  problems = runner.split_problems(dataset_dir, e.split, e.max_problems)
  benchmark = prompts.benchmark_of(problems)
  tokenizer = pretrained.load_tokenizer(run_dir / pretrained.RUN_EXPORT_DIR)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.param_rules(config.mesh)
  base = init_lib.initial_params(config, objective, mesh, rules)
  # Laid out on the mesh as the base is (one compilation serves both; a 7b model fits).
  _, finetuned = pretrained.load_pretrained(
      run_dir / pretrained.RUN_EXPORT_DIR,
      shardings=lambda a: nn.logical_to_mesh_sharding(nn.get_partition_spec(a), mesh, rules))
  batches = runner.validation_batches(
      dataset_dir / f"{d.valid_split}.jsonl", tokenizer, n_batches=d.val_batches,
      batch_size=d.batch_size, max_len=d.max_len, add_eos=d.train_eos)
  max_new_tokens = benchmarks.generation_length(e.max_new_tokens, benchmark)
  report, rows, samples = {}, [], []
  for name, params, mode in (("base", base, e.base_prompt_mode),
                             ("finetuned", finetuned, "finetuned")):
    settings = evaluate_pipeline.settings(
        e, max_new_tokens=max_new_tokens, seed=config.seed, prompt_mode=mode,
        eos_trained=d.train_eos, benchmark=benchmark, mesh=mesh, rules=rules)
    result = protocol.evaluate(objective.model, params, tokenizer, problems, settings)
    report[name] = {**result["summary"],
                    **runner.head_summary(objective.model, params, batches, mesh, rules)}
    rows += [{"model": name, "seed": config.seed, **row} for row in result["problems"]]
    samples += [{"model": name, **sample} for sample in result["samples"]]
  out = run_dir / EVAL_DIR
  report["problems_file"] = str(out / "problems.jsonl")
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    jsonl.write_jsonl(out / "problems.jsonl", rows, validate=None)
    jsonl.write_jsonl(out / "samples.jsonl", samples, validate=None)
    with jsonl.atomic_write(out / "summary.json") as f:
      json.dump(report, f, indent=2, sort_keys=True)
      f.write("\n")
  print(_line(report, len(problems), e.split), flush=True)
  return report


def _line(report: dict, n_problems: int, split: str) -> str:
  """One console line per model: its pass@k and greedy pass@1."""
  lines = [f"held-out evaluation on {n_problems} {split} problems:"]
  for name in MODELS:
    shown = {k: v for k, v in report[name].items()
             if k.startswith("pass@") or k == "greedy_pass@1"}
    temperature = report[name].get("temperature")
    lines.append(f"  {name:<9} " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
                 + (f" (T={temperature:g})" if temperature is not None else ""))
  return "\n".join(lines)
