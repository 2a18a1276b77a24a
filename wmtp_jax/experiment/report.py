"""``DIR/report.md`` and its figures, from the runs' own files: regenerated from scratch every
time, from whatever has finished (``python -m wmtp_jax.experiment … --report``).

Sections: every run with its status (a crashed run with its error and log, never left out); per
arm the mean ± 95% CI over seeds of the key metrics and, further down, of every metric; the paired
difference of each arm to the baseline arm on the per-problem results (bootstrap over problems ×
seeds, p-value; ``stats``); the FLOPs that trained the shared critic / reference; stability
(across-seed standard deviations, gradient-norm spikes); the figures (``plots``).
"""

import datetime
import math
import pathlib
import re

import numpy as np

from wmtp_jax.experiment import plots, runfiles, runner, stats
from wmtp_jax.experiment.grid import Run
from wmtp_jax.training import flops

REPORT_FILE = "report.md"
FLOPS = f"train/{flops.CUMULATIVE}"
KEY_METRICS = ("finetuned/greedy_pass@1", "base/pass@1", "base/greedy_pass@1",
               "train/val_unweighted", FLOPS)  # after the fine-tuned pass@k of every k
SPIKE_FACTOR = 3.0
CRASHED = ("failed", "incomplete")


def write(experiment, runs: list[Run], root: pathlib.Path) -> pathlib.Path:
  """Writes ``root/report.md`` and the figures beside it; returns the report's path."""
  files = [runfiles.read(r, root) for r in runs]
  arms: dict[str, list[runfiles.RunFiles]] = {}
  for f in files:
    if f.run.arm:  # every arm gets a column, finished seeds or not
      arms.setdefault(f.run.arm, []).extend([f] if f.status == runner.FINISHED else [])
  figures = plots.draw({a: r for a, r in arms.items() if r}, root)
  passes = sorted({k.removeprefix("finetuned/") for runs in arms.values() for f in runs
                   for k in f.metrics if re.fullmatch(r"finetuned/pass@\d+", k)},
                  key=lambda k: int(k.removeprefix("pass@")))
  budget = experiment.budget
  lines = [
      f"# Experiment report: {experiment.name}", "",
      f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} from the run "
      f"files in `{root}`; regenerate with `python -m wmtp_jax.experiment --config=… "
      f"--workdir={root} --report`.",
      f"Seeds {tuple(experiment.seeds)}; budget: "
      + (f"equal FLOPs, those of arm `{budget.flops_of}` in {budget.steps} steps"
         if budget.flops_of else f"equal steps ({budget.steps})")
      + f"; baseline arm `{experiment.baseline_arm}`. Means ± 95% CI (Student t) over the "
      "finished seeds; n = finished seeds.", "",
      *_runs_table(files, root), "",
      *_arm_table(arms, [f"finetuned/{k}" for k in passes] + list(KEY_METRICS),
                  "Results per arm"), "",
      *_paired(experiment, arms, [*passes, "greedy_pass@1"]), "",
      *_prerequisites(files), "",
      *_stability(arms), "",
      "## Figures", "",
      *(f"![{p.stem}]({p.name})" for p in figures), "",
      *_arm_table(arms, sorted({k for runs in arms.values() for f in runs for k in f.metrics}),
                  "All metrics (final values)"), ""]
  path = root / REPORT_FILE
  path.write_text("\n".join(lines))
  return path


def fmt(mean: float, half: float, n: int) -> str:
  """``"0.512 ± 0.031 (n=3)"``; ``"—"`` without values."""
  if n == 0:
    return "—"
  ci = "" if math.isnan(half) else f" ± {half:.3g}"
  return f"{mean:.4g}{ci} (n={n})"


def _runs_table(files: list[runfiles.RunFiles], root: pathlib.Path) -> list[str]:
  lines = ["## Runs", "", "| run | status | steps | train FLOPs | log |", "|---|---|---|---|---|"]
  for f in files:
    status = "**crashed**" if f.status in CRASHED else f.status
    if f.error:
      status += f": {f.error}"
    logged = [r["step"] for r in f.rows if "step" in r]
    steps = max(logged) if logged else "—"
    spent = f.metrics.get(FLOPS) or max((r.get(flops.CUMULATIVE, 0) for r in f.rows), default=0)
    lines.append(f"| {f.run.name} | {status.replace('|', '/')} | {steps} | "
                 f"{f'{spent:.3g}' if spent else '—'} | "
                 f"[log.txt]({f.log.relative_to(root)}) |")
  crashed = [f for f in files if f.status in CRASHED]
  if crashed:
    lines += ["", f"{len(crashed)} run(s) crashed; their results are left out of the tables "
              "below (see their log.txt). Running the experiment again resumes them."]
  return lines


def _arm_table(arms: dict[str, list[runfiles.RunFiles]], metrics, title: str) -> list[str]:
  names = list(arms)
  lines = [f"## {title}", "", "| metric | " + " | ".join(names) + " |",
           "|---|" + "---|" * len(names)]
  for metric in metrics:
    cells = [fmt(*stats.mean_ci([f.metrics.get(metric, np.nan) for f in arms[a]]))
             for a in names]
    if any(c != "—" for c in cells):
      lines.append(f"| {metric} | " + " | ".join(cells) + " |")
  return lines


def _paired(experiment, arms: dict[str, list[runfiles.RunFiles]], metrics: list[str]
            ) -> list[str]:
  base_name = experiment.baseline_arm
  lines = [f"## Paired difference to `{base_name}` (fine-tuned model)", "",
           f"Mean over problems × seeds of (arm − {base_name}) on the same held-out problems and "
           f"seeds; 95% CI and two-sided p-value from {experiment.bootstrap.samples} bootstrap "
           "resamples of problems and seeds.", "",
           "| arm | metric | difference | 95% CI | p | problems × seeds |",
           "|---|---|---|---|---|---|"]
  base = {f.run.seed: f for f in arms.get(base_name, [])}
  for arm, runs in arms.items():
    if arm == base_name:
      continue
    for metric in metrics:
      pairs = [(f, base[f.run.seed]) for f in runs if f.run.seed in base]
      scores = [(runfiles.problem_scores(a, metric), runfiles.problem_scores(b, metric))
                for a, b in pairs]
      common = sorted(set.intersection(*(set(a) & set(b) for a, b in scores))) if scores else []
      if not common:
        lines.append(f"| {arm} | {metric} | — | no paired per-problem results | | |")
        continue
      a_PxR = np.array([[a[p] for a, _ in scores] for p in common])
      b_PxR = np.array([[b[p] for _, b in scores] for p in common])
      r = stats.paired_bootstrap(a_PxR, b_PxR, samples=experiment.bootstrap.samples,
                                 seed=experiment.bootstrap.seed)
      lines.append(f"| {arm} | {metric} | {r['diff']:+.4f} | [{r['low']:+.4f}, {r['high']:+.4f}] "
                   f"| {r['p']:.3g} | {r['problems']} × {r['seeds']} |")
  return lines


def _prerequisites(files: list[runfiles.RunFiles]) -> list[str]:
  lines = ["## Frozen models trained first (shared per seed)", "",
           "Their training FLOPs are not in the arms' budgets (which count their forwards).", "",
           "| run | status | training FLOPs |", "|---|---|---|"]
  for f in files:
    if not f.run.arm:
      lines.append(f"| {f.run.name} | {f.status} | {f.metrics.get(FLOPS, float('nan')):.3g} |")
  return lines


def _stability(arms: dict[str, list[runfiles.RunFiles]]) -> list[str]:
  lines = ["## Stability", "",
           f"Across-seed standard deviation of final values; gradient-norm spikes: logged steps "
           f"whose norm exceeds {SPIKE_FACTOR:g}× the run's median (mean per run, max).", "",
           "| arm | std fine-tuned pass@1 | std val loss (unweighted) | spikes per run | max "
           "spikes |", "|---|---|---|---|---|"]
  for arm, runs in arms.items():
    std = lambda key: (f"{np.std([f.metrics.get(key, np.nan) for f in runs], ddof=1):.3g}"
                       if len(runs) > 1 else "—")
    counts = [stats.spikes([r["grad_norm"] for r in f.rows if "grad_norm" in r], SPIKE_FACTOR)
              for f in runs]
    lines.append(f"| {arm} | {std('finetuned/pass@1')} | {std('train/val_unweighted')} | "
                 f"{np.mean(counts) if counts else float('nan'):.3g} | "
                 f"{max(counts, default=0)} |")
  return lines
