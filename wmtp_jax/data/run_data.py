"""The data of a training run, from ``config.data``: dataset, tokenizer, sampler, iterators.

``config.data.dir`` names a dataset directory (the ``wmtp_jax.data`` layout); empty means the
embedded synthetic verifiable task of ``config.data.synthetic``, cached under the root
``config.data.cache_dir`` (default ``$XDG_CACHE_HOME/wmtp_jax``) in a directory of its own per
parameters (``synthetic.cached_path``), built once by process 0 while the other processes wait.
The sampler is ``config.data.sampler`` (a ``samplers.METHODS`` name, or ``"all"`` for every
record) with ``config.data.sampler_args`` (the reference's samplers: ``reference_sampler_args``,
``samplers.method_args``); empty picks the objective's default: correct
solutions, every record (``samples="all"``) or correct/incorrect pairs (the critic).
"""

import dataclasses
import pathlib
from collections.abc import Callable, Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from wmtp_jax.data import (pipeline, records, reference_samplers, samplers, synthetic,
                           tokenizer as tokenizer_lib)

DEFAULT_SAMPLER = {"correct": "correct_only", "all": "all", "pairs": "pairs"}
HOST_ONLY_KEYS = ("dropped_before",)
DATASET_BARRIER = "wmtp_jax.data.run_data.dataset_dir"  # every process passes it once per call


@dataclasses.dataclass
class RunData:
  train: object                                   # grain IterDataset of this process's batches
  validation: Callable[[], Iterator[dict]]        # fresh pass over the validation batches
  tokenizer: object
  directory: pathlib.Path
  examples_per_epoch: int                         # training records (pairs) the sampler chose

  @staticmethod
  def to_global(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """This process's numpy batch → global arrays sharded along the batch axis."""
    return pipeline.to_global_batch({k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS},
                                    sharding)


def dataset_dir(data_cfg) -> pathlib.Path:
  """The dataset directory: ``data.dir``, or the synthetic task's in the cache (built by process
  0 if missing; every process returns once it is complete: call this from all processes)."""
  if data_cfg.dir:
    path = pathlib.Path(data_cfg.dir)
    if not path.is_dir():
      raise FileNotFoundError(f"config.data.dir={data_cfg.dir!r} is not a directory")
    return path
  if jax.process_index() == 0:
    synthetic.cached_dataset(data_cfg.cache_dir, **data_cfg.synthetic)
  multihost_utils.sync_global_devices(DATASET_BARRIER)
  return synthetic.cached_path(data_cfg.cache_dir, **data_cfg.synthetic)


def sample_indices(store: records.RecordStore, method: str, args: dict, *, seed: int,
                   tokenizer=None) -> np.ndarray:
  """Line indices (``[N]``, or ``[N, 2]`` pairs) chosen by ``method`` on the store's index; a
  method that bins response lengths gets them measured with ``tokenizer`` first."""
  if method == "all":
    return np.random.default_rng(seed).permutation(len(store)).astype(np.int64)
  problem_index_map = store.meta["problem_index_map"]
  if method in samplers.NEEDS_RESPONSE_LENGTHS:
    problem_index_map = reference_samplers.with_response_lengths(problem_index_map, lambda ids: [
        len(x) for x in tokenizer([store[i]["output"] for i in ids],
                                  add_special_tokens=False)["input_ids"]])
  indices = samplers.sample(problem_index_map, method, seed=seed, **args)
  if len(indices) == 0:
    raise ValueError(f"sampler {method!r} with {args} selected no record from {store.path}")
  return indices


def _split_path(directory: pathlib.Path, split: str) -> pathlib.Path:
  path = directory / f"{split}.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: split {split!r} not found in the dataset directory")
  return path


def build(config, objective, workdir: pathlib.Path) -> RunData:
  """Train and validation iterators for ``objective`` (this process's shard of each batch)."""
  del workdir
  d = config.data
  directory = dataset_dir(d)
  tok = tokenizer_lib.load_tokenizer(directory / "tokenizer" if not d.tokenizer else d.tokenizer)
  vocab = objective.model.cfg.vocab_size
  tokenizer_lib.check_vocab(tok, vocab, where="config.model.vocab_size")
  method = d.sampler or DEFAULT_SAMPLER[objective.samples]
  if (method in samplers.PAIR_METHODS) != (objective.batch_kind == "pairs"):
    needs = "pairs" if objective.batch_kind == "pairs" else "single records"
    raise ValueError(f"config.data.sampler={method!r} does not fit pipeline {objective.name!r} "
                     f"(it needs {needs})")
  if d.batch_size % jax.process_count():
    raise ValueError(f"config.data.batch_size={d.batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  per_process = d.batch_size // jax.process_count()
  common = dict(tokenizer=tok, batch_size=per_process, max_len=d.max_len,
                truncation=d.truncation, add_eos=d.train_eos,
                bucket_lengths=tuple(d.bucket_lengths) or None)

  train_store = records.RecordStore(_split_path(directory, d.train_split))
  args = samplers.method_args(method, d.sampler_args, d.reference_sampler_args)
  train_indices = sample_indices(train_store, method, args, seed=d.seed, tokenizer=tok)
  train = pipeline.make_dataset(train_store, train_indices, seed=d.seed, num_epochs=None,
                                num_workers=d.workers, **common)

  def validation() -> Iterator[dict]:
    if not d.val_batches:
      return iter(())
    store = records.RecordStore(_split_path(directory, d.valid_split))
    indices = sample_indices(store, method, samplers.validation_args(method, args), seed=d.seed,
                             tokenizer=tok)
    ds = pipeline.make_dataset(store, indices, seed=d.seed, num_epochs=None, shuffle=False,
                               **common)
    it = iter(ds)
    return (next(it) for _ in range(d.val_batches))

  return RunData(train=train, validation=validation, tokenizer=tok, directory=directory,
                 examples_per_epoch=len(train_indices))
