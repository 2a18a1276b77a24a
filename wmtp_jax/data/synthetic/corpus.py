"""The pre-training corpus of the tiny bases (``configs/pretrain.py``): commented code of other
problems than the fine-tuning task's, in no instruction format.

Problems. ``n_train + n_valid`` problems of the ``pretrain`` split (``problems.PRETRAIN``): keys
that hash to ``train``, less the fine-tuning train problems of the dataset the corpus belongs to,
so that no pre-training problem is a train, valid or test problem of that dataset (by key), and
the dataset's splits stay as they are. The last ``n_valid`` problems make the validation split.

Documents. One ``plain`` record per correct solution (``wmtp_jax.data.schema``: the document is
its ``output``, framed by BOS and EOS alone, with no prompt): the problem's instruction as a
comment line, then the solution (each of its surface variants: the canonical code, the
accumulator, the nested expression, …)::

  # Write a function `f(xs)` that takes a list of integers xs, adds 7 to each element, ...
  def f(xs):
      ...

like the commented code a real code model is pre-trained on. A base thus knows the code, the
English of the specifications and how a comment's specification shapes the code below it, but
not the fine-tuning format (the Alpaca prompt and its ``### Response:`` header): its held-out
pass@1 under the fine-tuning prompt stays low (0.015 on 200 test problems), and fine-tuning from
it beats fine-tuning from random weights (README, "Tiny pretrained bases").
The pre-training objective trains on the whole document and its closing EOS.

Measured on the way (baseline fine-tuned 400 steps from the MTP base, greedy pass@1 on 200 test
problems): version 1, code and instructions in separate documents behind the template's header
with an empty instruction, 0.200; version 2, the same documents as plain text, 0.130; random
weights, 0.795; version 3, this corpus, 0.880. A base that never saw code conditioned on a
specification learns to ignore the prompt, and fine-tuning has to unlearn that.

Files. ``<dir>/{train,valid}.jsonl`` with their index, and ``<dir>/tokenizer``: a copy of the
dataset's tokenizer (a base and the runs that start from it read the same tokens).
``cached_corpus`` keeps one directory per parameters in the cache (``wmtp_jax.data.cache``):
``<cache root>/pretrain-corpus-s<seed>-<n_train>x<n_valid>-<hash8>``, the hash covering the
corpus parameters, ``CORPUS_VERSION`` and the dataset's parameters.
"""

import functools
import os
import shutil
from pathlib import Path

from wmtp_jax.data import cache, jsonl, records, template, tokenizer
from wmtp_jax.data.synthetic import dataset
from wmtp_jax.data.synthetic.problems import PRETRAIN, SOURCE, Problem, generate_problems

CORPUS_VERSION = 3  # bump when the corpus's documents change
CACHE_KIND = "pretrain-corpus"
CORPUS_SPLITS = ("train", "valid")


def corpus_problems(*, seed: int, n_train: int, n_valid: int,
                    dataset_params: dict) -> dict[str, list[Problem]]:
  """``{"train": n_train problems, "valid": n_valid problems}`` of the ``pretrain`` split, none of
  them a problem of the dataset of ``dataset_params`` (``dataset.cached_dataset``'s keywords)."""
  train_keys = frozenset(p.key for p in generate_problems(
      dataset_params["n_train"], seed=dataset_params["seed"], split="train"))
  problems = generate_problems(n_train + n_valid, seed=seed, split=PRETRAIN, exclude=train_keys)
  return {"train": problems[:n_train], "valid": problems[n_train:]}


def document(instruction: str, code: str) -> str:
  """A corpus document: ``instruction`` as a comment line above ``code``."""
  return f"# {instruction}\n{code}"


def documents(problem: Problem) -> list[dict]:
  """The ``plain`` records of ``problem``'s documents, one per correct solution."""
  return [{"instruction": "", "input": "", "output": document(problem.instruction, code),
           "problem_id": problem.problem_id, "is_correct": True,
           "source": f"{SOURCE}-{PRETRAIN}", "key": problem.key, "format": "plain"}
          for code in problem.solutions]


def write_corpus(out_dir: str | os.PathLike, *, seed: int, n_train: int, n_valid: int,
                 dataset_dir: str | os.PathLike, dataset_params: dict) -> Path:
  """Writes the corpus of these parameters into ``out_dir`` (module docstring), with the
  tokenizer of the dataset in ``dataset_dir`` (built from ``dataset_params``)."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  shutil.copytree(Path(dataset_dir) / dataset.TOKENIZER_DIR, out / dataset.TOKENIZER_DIR)
  tok = tokenizer.load_tokenizer(out / dataset.TOKENIZER_DIR)
  length_fn = functools.partial(template.example_length, tokenizer=tok)
  problems = corpus_problems(seed=seed, n_train=n_train, n_valid=n_valid,
                             dataset_params=dataset_params)
  for split in CORPUS_SPLITS:
    path = out / f"{split}.jsonl"
    jsonl.write_jsonl(path, [r for p in problems[split] for r in documents(p)])
    records.build_index(path, tok, length_fn=length_fn)
  return out


def cached_corpus(cache_root: str | os.PathLike | None, *, seed: int, n_train: int,
                  n_valid: int, dataset_params: dict) -> Path:
  """The corpus directory of these parameters in the cache, built once (with the dataset of
  ``dataset_params``, ``dataset.cached_dataset``'s keywords, if that is missing too)."""
  data_dir = dataset.cached_dataset(cache_root, **dataset_params)
  params = {"corpus_version": CORPUS_VERSION, "seed": seed, "n_train": n_train,
            "n_valid": n_valid, "dataset": dataset.generation_params(**dataset_params)}
  build = lambda tmp: write_corpus(tmp, seed=seed, n_train=n_train, n_valid=n_valid,
                                   dataset_dir=data_dir, dataset_params=dataset_params)
  return cache.cached_dir(cache_root, CACHE_KIND, params, build,
                          label=f"s{seed}-{n_train}x{n_valid}")
