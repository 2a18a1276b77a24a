"""The synthetic dataset directory: generation, files, the cache (``cached_dataset``), the CLI.

``write_dataset`` writes the layout of ``wmtp_jax.data`` plus ``synthetic.json`` (the generation
parameters; written last, so it marks a complete dataset), which ``ensure_dataset`` compares to
reuse the dataset of a given directory. ``cached_dataset`` keeps one dataset per parameters in
the cache (``wmtp_jax.data.cache``): ``<cache root>/synthetic-s<seed>-<n_train>x<n_valid>x
<n_test>-v<vocab_size>-<hash8>`` (``cached_path``), built once and never modified. CLI:
``python -m wmtp_jax.data.synthetic --out DIR`` (writes exactly ``DIR``).
"""

import argparse
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from wmtp_jax.data import cache, jsonl, records, schema, template, tokenizer
from wmtp_jax.data.synthetic.grammar import ENTRY_POINT
from wmtp_jax.data.synthetic.label import label_candidates
from wmtp_jax.data.synthetic.problems import SOURCE, SPLITS, Problem, generate_problems

log = logging.getLogger(__name__)

# Bump when the generated data changes, so that cached datasets are regenerated.
GENERATOR_VERSION = 2  # 2: the records carry the ground-truth spans (critical, mutated)
DEFAULT_SIZES = {"n_train": 1000, "n_valid": 100, "n_test": 200}
DEFAULT_VOCAB_SIZE = 512
PARAMS_FILE = "synthetic.json"
TOKENIZER_DIR = "tokenizer"
CACHE_KIND = "synthetic"  # cache entries: <cache root>/synthetic-<label>-<hash8>


def _solution_records(problem: Problem, labels: Sequence[bool]) -> list[dict]:
  """One record per candidate, with its spans: ``mutated`` is empty on a record labelled correct
  (a solution, or a mutant that passes the tests)."""
  if not labels[0]:
    raise RuntimeError(f"{problem.problem_id} ({problem.key}): the canonical solution fails "
                       f"its tests in the sandbox:\n{problem.solutions[0]}{problem.test_code}")
  mutated = ((),) * len(problem.solutions) + problem.mutated
  return [{"instruction": problem.instruction, "input": "", "output": code,
           "problem_id": problem.problem_id, "is_correct": bool(label),
           "difficulty": problem.difficulty, "source": SOURCE,
           "critical": [list(span) for span in critical],
           "mutated": [] if label else [list(span) for span in departs]}
          for code, label, critical, departs in zip(problem.candidates, labels, problem.critical,
                                                    mutated)]


def _problem_record(problem: Problem) -> dict:
  return {"problem_id": problem.problem_id, "prompt": problem.instruction,
          "entry_point": ENTRY_POINT, "test_code": problem.test_code, "source": SOURCE,
          "difficulty": problem.difficulty}


def generation_params(*, seed: int, n_train: int, n_valid: int, n_test: int,
                      vocab_size: int) -> dict:
  """The parameters that determine a dataset's content (recorded in ``synthetic.json``)."""
  return {"generator_version": GENERATOR_VERSION, "seed": seed, "n_train": n_train,
          "n_valid": n_valid, "n_test": n_test, "vocab_size": vocab_size}


def _expected_files(out_dir: Path) -> list[Path]:
  files = [out_dir / TOKENIZER_DIR / "tokenizer.json"]
  for split in SPLITS:
    offsets, meta = records.index_paths(out_dir / f"{split}.jsonl")
    files += [out_dir / f"{split}.jsonl", out_dir / f"{split}.problems.jsonl", offsets, meta]
  return files


def write_dataset(out_dir: str | os.PathLike, *, n_train: int = DEFAULT_SIZES["n_train"],
                  n_valid: int = DEFAULT_SIZES["n_valid"], n_test: int = DEFAULT_SIZES["n_test"],
                  seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
                  workers: int | None = None) -> Path:
  """Generates, labels and writes the synthetic dataset to ``out_dir``; returns its path.

  Writes the layout of ``wmtp_jax.data`` (solution records, evaluation problems, a byte-level BPE
  tokenizer trained on the formatted train examples, the index of every split) and then
  ``synthetic.json``. The index names the tokenizer by its path relative to ``out_dir``
  (``"tokenizer"``), so a dataset directory can be moved or copied. Byte-identical for the same
  parameters (``workers`` only changes the speed).
  """
  started = time.monotonic()
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / PARAMS_FILE).unlink(missing_ok=True)  # incomplete until rewritten at the end
  sizes = {"train": n_train, "valid": n_valid, "test": n_test}
  problems = {split: generate_problems(sizes[split], seed=seed, split=split) for split in SPLITS}
  flat = [p for split in SPLITS for p in problems[split]]
  labels = iter(label_candidates(flat, workers=workers))
  solution_records = {split: [r for p in problems[split]
                              for r in _solution_records(p, next(labels))]
                      for split in SPLITS}
  for split in SPLITS:
    jsonl.write_jsonl(out / f"{split}.jsonl", solution_records[split])
    jsonl.write_jsonl(out / f"{split}.problems.jsonl", map(_problem_record, problems[split]),
                      validate=schema.validate_problem)
  tok = tokenizer.train_bpe_tokenizer(
      [template.format_prompt(r) + r["output"] for r in solution_records["train"]], vocab_size,
      out / TOKENIZER_DIR)
  tok.name_or_path = TOKENIZER_DIR
  length_fn = functools.partial(template.example_length, tokenizer=tok)
  for split in SPLITS:
    records.build_index(out / f"{split}.jsonl", tok, length_fn=length_fn)
  params = generation_params(seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test,
                             vocab_size=vocab_size)
  with jsonl.atomic_write(out / PARAMS_FILE) as f:
    json.dump(params, f, indent=2, sort_keys=True)
    f.write("\n")
  log.info("synthetic dataset %s: %s records in %.1f s", out,
           {split: len(r) for split, r in solution_records.items()}, time.monotonic() - started)
  return out


def ensure_dataset(out_dir: str | os.PathLike, *, n_train: int = DEFAULT_SIZES["n_train"],
                   n_valid: int = DEFAULT_SIZES["n_valid"], n_test: int = DEFAULT_SIZES["n_test"],
                   seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
                   workers: int | None = None) -> Path:
  """Returns ``out_dir`` after making sure it holds the dataset ``write_dataset`` would write.

  A complete dataset (all files present, ``synthetic.json`` equal to these parameters and the
  current ``GENERATOR_VERSION``) is reused as is; anything else is regenerated in place. Call it
  from one process per directory, not concurrently, and not on a directory a job reads; the
  shared cache is ``cached_dataset``.
  """
  out = Path(out_dir)
  params = generation_params(seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test,
                             vocab_size=vocab_size)
  try:
    recorded = json.loads((out / PARAMS_FILE).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    recorded = None
  if recorded == params and all(p.is_file() for p in _expected_files(out)):
    log.info("reusing synthetic dataset %s", out)
    return out
  return write_dataset(out, workers=workers, **{k: v for k, v in params.items()
                                                if k != "generator_version"})


def _cache_key(*, seed: int, n_train: int, n_valid: int, n_test: int,
               vocab_size: int) -> tuple[dict, str]:
  """A dataset's key in the cache: its parameters (``generation_params``) and its directory's
  label."""
  params = generation_params(seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test,
                             vocab_size=vocab_size)
  return params, f"s{seed}-{n_train}x{n_valid}x{n_test}-v{vocab_size}"


def cached_path(cache_root: str | os.PathLike | None = None, *,
                n_train: int = DEFAULT_SIZES["n_train"], n_valid: int = DEFAULT_SIZES["n_valid"],
                n_test: int = DEFAULT_SIZES["n_test"], seed: int = 0,
                vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
  """Where the cached dataset of these parameters lives (built or not) in ``cache_root`` (empty:
  ``$XDG_CACHE_HOME/wmtp_jax``): ``synthetic-s0-1000x100x200-v512-<hash8>`` for the defaults,
  the hash covering the parameters and ``GENERATOR_VERSION``."""
  params, label = _cache_key(seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test,
                             vocab_size=vocab_size)
  return cache.entry_path(cache_root, CACHE_KIND, params, label)


def cached_dataset(cache_root: str | os.PathLike | None = None, *,
                   n_train: int = DEFAULT_SIZES["n_train"],
                   n_valid: int = DEFAULT_SIZES["n_valid"], n_test: int = DEFAULT_SIZES["n_test"],
                   seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
                   workers: int | None = None) -> Path:
  """``cached_path(...)``, holding the complete dataset: written by ``write_dataset`` if missing
  (atomically, once across processes: ``cache.cached_dir``), never modified once there."""
  sizes = dict(seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test, vocab_size=vocab_size)
  params, label = _cache_key(**sizes)
  return cache.cached_dir(cache_root, CACHE_KIND, params,
                          lambda tmp: write_dataset(tmp, workers=workers, **sizes), label=label)


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m wmtp_jax.data.synthetic --out DIR``: writes a dataset and prints its summary."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--seed", type=int, default=0)
  for split in SPLITS:
    parser.add_argument(f"--n-{split}", type=int, default=DEFAULT_SIZES[f"n_{split}"],
                        help=f"number of {split} problems")
  parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
  parser.add_argument("--workers", type=int, default=None, help="sandbox processes")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  out = write_dataset(args.out, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test,
                      seed=args.seed, vocab_size=args.vocab_size, workers=args.workers)
  for split in SPLITS:
    index = records.RecordStore(out / f"{split}.jsonl").meta["problem_index_map"].values()
    correct = sum(len(e["correct_indices"]) for e in index)
    incorrect = sum(len(e["incorrect_indices"]) for e in index)
    longest = max((n for e in index
                   for n in e["correct_token_lengths"] + e["incorrect_token_lengths"]), default=0)
    print(f"{split}: {len(index)} problems, {correct} correct + {incorrect} incorrect solutions, "
          f"longest example {longest} tokens")
