"""The evaluation protocol (the reference's, issue 15 item 6): ``n`` samples per problem at each
of several temperatures (top-p), the temperature with the best pass@1 kept, and optionally greedy
pass@1, with per-problem counts for paired statistics.

``evaluate(model, params, tokenizer, problems, settings)`` returns::

  {"summary": {"pass@k"… (the best temperature's), "temperature": best T,
               "by_temperature": {"0.2": {"pass@k"…}, …}, "greedy_pass@1", "n_problems",
               "n_samples", "prompt_mode", "seconds"},
   "problems": [{"problem_id", "n", "correct": {"0.2": c, …}, "greedy_passed": bool}],
   "samples": [{"task_id", "temperature", "sample", "completion", "passed", …}]}

Keys are left out when their part did not run (no temperatures: greedy only; ``greedy`` off).
Choosing the temperature on the evaluated problems themselves is the reference's protocol; it
favours the better of the two on these problems, equally for every model compared.
"""

import dataclasses
import time
from collections.abc import Sequence

from wmtp_jax.eval import runner


@dataclasses.dataclass(frozen=True)
class Settings:
  """What ``evaluate`` runs (``config.evaluate`` of the pipelines, ``configs/evaluate.py``).

  Attributes:
    n_samples: samples per problem at each temperature.
    temperatures: sampling temperatures (> 0); the best pass@1 is kept. Empty: greedy only.
    top_p: nucleus mass of the sampled runs.
    ks: pass@k values (each reported when ``n_samples ≥ k``).
    greedy: also one greedy sample per problem (``greedy_pass@1``).
    max_new_tokens, batch_size, seed: generation.
    prompt_mode, eos_trained, benchmark: ``runner.evaluate_problems``.
    timeout_s, memory_mb, workers: the sandbox, per program.
    draft_heads, test_kinds, mesh, rules: ``runner.evaluate_problems``.
  """
  n_samples: int = 1
  temperatures: Sequence[float] = ()
  top_p: float = 1.0
  ks: Sequence[int] = (1,)
  greedy: bool = True
  max_new_tokens: int = 128
  batch_size: int = 16
  seed: int = 0
  prompt_mode: str = "finetuned"
  eos_trained: bool = True
  benchmark: str | None = None
  timeout_s: float = 10.0
  memory_mb: int = 1024
  workers: int | None = None
  draft_heads: int = 0
  test_kinds: Sequence[str] | None = None
  mesh: object = None
  rules: Sequence = ()

  def __post_init__(self):
    if any(t <= 0 for t in self.temperatures):
      raise ValueError(f"temperatures={tuple(self.temperatures)} must be > 0 (greedy is the "
                       f"`greedy` option)")
    if not self.temperatures and not self.greedy:
      raise ValueError("nothing to evaluate: no temperatures and greedy off")


def _key(temperature: float) -> str:
  return f"{temperature:g}"


def evaluate(model, params, tokenizer, problems: list[dict], settings: Settings) -> dict:
  """Runs the protocol of ``settings`` on ``problems`` (module docstring)."""
  s = settings
  common = dict(benchmark=s.benchmark, prompt_mode=s.prompt_mode, eos_trained=s.eos_trained,
                max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=s.seed,
                workers=s.workers, timeout_s=s.timeout_s, memory_mb=s.memory_mb,
                draft_heads=s.draft_heads, test_kinds=s.test_kinds, mesh=s.mesh, rules=s.rules)
  started = time.perf_counter()
  rows = {p["problem_id"]: {"problem_id": p["problem_id"]} for p in problems}
  summary: dict = {"by_temperature": {}} if s.temperatures else {}
  samples: list[dict] = []
  for temperature in s.temperatures:
    result = runner.evaluate_problems(model, params, tokenizer, problems, n_samples=s.n_samples,
                                      temperature=temperature, top_p=s.top_p, ks=tuple(s.ks),
                                      **common)
    summary["by_temperature"][_key(temperature)] = result["summary"]
    for p in result["per_problem"]:
      rows[p["task_id"]].setdefault("n", p["n"])
      rows[p["task_id"]].setdefault("correct", {})[_key(temperature)] = p["c"]
    samples += [{**sample, "temperature": temperature} for sample in result["samples"]]
  if s.temperatures:
    best = max(s.temperatures, key=lambda t: summary["by_temperature"][_key(t)]["pass@1"])
    summary.update(summary["by_temperature"][_key(best)], temperature=best)
  if s.greedy:
    result = runner.evaluate_problems(model, params, tokenizer, problems, **common)
    for p in result["per_problem"]:
      rows[p["task_id"]]["greedy_passed"] = bool(p["c"])
    samples += [{**sample, "temperature": 0.0} for sample in result["samples"]]
    if not s.temperatures:
      summary.update(result["summary"])
    summary["greedy_pass@1"] = result["summary"]["pass@1"]
  summary.update(n_problems=len(problems), n_samples=s.n_samples if s.temperatures else 1,
                 prompt_mode=s.prompt_mode, seconds=time.perf_counter() - started)
  return {"summary": summary, "problems": list(rows.values()), "samples": samples}
