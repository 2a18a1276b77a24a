"""Grain input pipeline: sampled line indices → per-process numpy batches → global jax.Arrays.

Stages of ``make_dataset`` (per JAX process):

  1. ``MapDataset.source(indices)``: the sampler's ``[N]`` line indices, or ``[N, 2]`` (correct,
     incorrect) pairs for pairwise batches (``samplers.pairs``);
  2. a global shuffle seeded by ``seed`` (identical on every process), then the strided shard
     ``[process_index::process_count]``: shards are disjoint and cover the sampled set;
  3. ``repeat(num_epochs)``: each epoch is reshuffled (Grain folds the epoch into the seed);
  4. random-access read from the ``RecordStore`` + ``template.encode`` (threads: ``read_threads``);
     records that ``encode`` drops (too long) are skipped, and every row carries the count of
     records skipped just before it (``dropped_before``; a pair is skipped, and counted once,
     when either side is dropped);
  5. batching to the per-process ``batch_size`` with ``template.collate`` / ``collate_pairs``;
  6. ``mp_prefetch`` in ``num_workers`` processes (0 = in-process). Worker w processes the stage-4
     elements ``w::num_workers`` and batches are taken from the workers in turn, so 1 worker
     yields exactly the in-process batches, and more workers a different but deterministic order.

Batches are dicts of numpy arrays: ``tokens, labels, attention_mask [B, S] int32``,
``is_correct [B] float32``, ``lengths [B] int32``, ``dropped_before [B] int32``, and when the
records carry ground-truth spans (synthetic data) ``critical_mask, mutated_mask [B, S] int32``
(target-aligned like ``labels``; ``template``); pairwise batches carry the ``collate`` keys
prefixed ``pos_``/``neg_`` (both ``[B, S]``) and ``dropped_before``.

The iterator (``iter(dataset)``) is checkpointable: ``get_state()``/``set_state(state)`` (a JSON
dict); ``wmtp_jax.checkpoints.checkpointer.Checkpointer`` saves it with the train state in one
Orbax step (``grain.checkpoint.CheckpointSave``, one file per process). A state restores only into a pipeline
built with the same arguments; ``reshard_state`` converts the states of P processes into the state
of a shard of P' processes (``num_workers=0`` only).

Layouts: the global stream is the shuffled epochs one after another, and process p of P reads its
positions p, p + P, p + 2P, … of every epoch. While the N sampled elements divide by P and no
record is dropped, global batch t of any layout is the same set of rows (the global positions
``[t·B, (t+1)·B)``, in a layout-dependent order). A dropped record is replaced by the next
element of the same process's shard, and with ``N % P != 0`` the shards have different lengths
and wrap into the next epoch at different steps, so from there on the layouts' batches differ in
a few rows.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

from absl import flags
import grain
import jax
import numpy as np

from wmtp_jax.data import template


@dataclasses.dataclass(frozen=True)
class _ReadAndEncode:
  """Line index ``[]`` (or pair ``[2]``) → list of 1 (or 2) ``Example``s, None if any dropped."""
  store: Any
  tokenizer: Any
  max_len: int
  truncation: str
  add_bos: bool
  add_eos: bool

  def __call__(self, index: np.ndarray) -> list[template.Example] | None:
    examples = [template.encode(self.store[int(i)], self.tokenizer, self.max_len,
                                truncation=self.truncation, add_bos=self.add_bos,
                                add_eos=self.add_eos)
                for i in np.atleast_1d(index)]
    return None if any(e is None for e in examples) else examples


class _SkipDroppedIterator(grain.DatasetIterator):
  """Yields ``(examples, n_skipped_before)``, skipping the None (dropped) elements."""

  def __next__(self) -> tuple[list[template.Example], int]:
    skipped = 0
    while (examples := next(self._parent)) is None:
      skipped += 1
    return examples, skipped

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class _SkipDropped(grain.IterDataset):
  """See ``_SkipDroppedIterator``."""

  def __iter__(self) -> _SkipDroppedIterator:
    return _SkipDroppedIterator(self._parent.__iter__())


@dataclasses.dataclass(frozen=True)
class _Collate:
  """Batch function: ``[(examples, n_skipped_before)] * B`` → numpy batch dict."""
  pad_id: int
  pad_to: int | None
  bucket_lengths: Sequence[int] | None

  def __call__(self, items: Sequence[tuple[list[template.Example], int]]) -> dict[str, np.ndarray]:
    columns = list(zip(*(examples for examples, _ in items)))
    pad = dict(pad_id=self.pad_id, pad_to=self.pad_to, bucket_lengths=self.bucket_lengths)
    if len(columns) == 2:
      batch = template.collate_pairs(columns[0], columns[1], **pad)
    else:
      batch = template.collate(columns[0], **pad)
    batch["dropped_before"] = np.asarray([skipped for _, skipped in items], dtype=np.int32)
    return batch


def make_dataset(store, indices: np.ndarray, tokenizer, *, batch_size: int, max_len: int,
                 seed: int, num_epochs: int | None = None, shuffle: bool = True,
                 drop_remainder: bool = True, truncation: str = "response",
                 add_bos: bool = True, add_eos: bool = True, pad_to: int | None = None,
                 bucket_lengths: Sequence[int] | None = None, num_workers: int = 0,
                 worker_buffer_size: int = 2, read_threads: int = 0,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
  """Builds this process's batch stream (see the module docstring).

  Args:
    store: ``wmtp_jax.data.records.RecordStore`` (random access ``store[i] -> record``).
    indices: ``[N]`` line indices or ``[N, 2]`` (correct, incorrect) pairs, identical on every
      process (a ``samplers`` output).
    tokenizer: see ``template``; ``template.pad_id(tokenizer)`` pads.
    batch_size: rows per batch of this process (the global batch is ``process_count`` times it).
    max_len: longest row; ``truncation`` is the ``template.encode`` policy beyond it.
    add_bos, add_eos: ``template.encode``'s (``add_eos``: ``config.data.train_eos``).
    seed: shuffle seed.
    num_epochs: passes over the sampled set; None repeats forever (training: stop after a number
      of steps, so that every process yields the same number of batches).
    shuffle: global shuffle, reshuffled every epoch; False keeps the sampler's order (curriculum).
    drop_remainder: drop a last incomplete batch (training) or yield it (evaluation).
    pad_to, bucket_lengths: batch length S (``template.padded_length``).
    num_workers: Grain prefetch worker processes (0 = in-process). Workers are spawned, so a
      script using them needs the ``if __name__ == "__main__":`` guard.
    worker_buffer_size: batches buffered per worker.
    read_threads: threads reading + encoding within each process (0 = on demand, no threads).
    process_index, process_count: shard of this process (default: ``jax.process_index()`` and
      ``jax.process_count()``).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  indices = np.asarray(indices, dtype=np.int64)
  if indices.ndim not in (1, 2) or (indices.ndim == 2 and indices.shape[1] != 2):
    raise ValueError(f"indices must be [N] or [N, 2], got shape {indices.shape}")
  ds = grain.MapDataset.source(indices)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds[process_index::process_count].repeat(num_epochs)
  ds = ds.map(_ReadAndEncode(store, tokenizer, max_len, truncation, add_bos, add_eos))
  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * read_threads)
  it_ds = _SkipDropped(ds.to_iter_dataset(read_options, allow_nones=True))
  it_ds = it_ds.batch(batch_size, drop_remainder=drop_remainder,
                      batch_fn=_Collate(template.pad_id(tokenizer), pad_to, bucket_lengths))
  if num_workers:
    # Grain ≤ 0.2.18 reads an absl flag in mp_prefetch and fails unless flags were parsed
    # (google/grain#1355); programs without absl.app get the flag defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer_size))
  return it_ds


def _shard_length(num_indices: int, process_index: int, process_count: int) -> int:
  """Elements per epoch of shard ``process_index`` (positions ``process_index::process_count``)."""
  return len(range(process_index, num_indices, process_count))


def _next_position(num_indices: int, read: int, process_index: int, process_count: int) -> int:
  """Global stream position (``epoch · N + position in the epoch``) of the next element of a shard
  that has read ``read`` elements."""
  epoch, row = divmod(read, _shard_length(num_indices, process_index, process_count))
  return epoch * num_indices + process_index + row * process_count


def _first_position_from(num_indices: int, start: int, process_index: int,
                         process_count: int) -> int:
  """The first global position ``>= start`` that belongs to shard ``process_index``."""
  epoch, j = divmod(start, num_indices)
  j += (process_index - j) % process_count
  return epoch * num_indices + j if j < num_indices else (epoch + 1) * num_indices + process_index


def reshard_state(states: Sequence[dict[str, Any]], num_indices: int, *, process_index: int,
                  process_count: int) -> tuple[dict[str, Any], bool]:
  """``(state, exact)``: the iterator state of shard ``process_index`` of ``process_count`` that
  continues the streams saved by ``len(states)`` processes (``states[p]``: process p's
  ``get_state()``) of a pipeline over ``num_indices`` sampled elements (see the module docstring).

  The saved processes have read ``g = Σ_p next_index_p`` elements (dropped ones included); the new
  shard resumes at its first global position ``>= g``, so the new layout reads positions g, g+1, …
  ``exact``: the saved processes had read exactly the positions ``[0, g)`` (so without dropped
  records while ``N % P == 0`` or in the first epoch, P the saved process count), so nothing is
  read twice or skipped. Otherwise the saved shards stopped at different global positions around
  g: the elements they left unread before g are skipped and as many that some of them had read
  from g on are read again (of the order of the difference between the shards' drop counts, or
  of one element per epoch for shards of different lengths).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if any(set(s) != {"next_index"} for s in states):
    raise ValueError(f"cannot reshard the data iterator state {states[0]} (keys other than "
                     f"'next_index': a pipeline with config.data.workers > 0?); resume with the "
                     f"{len(states)} processes that saved it")
  saved = len(states)
  read = [int(s["next_index"]) for s in states]
  total = sum(read)
  exact = all(_next_position(num_indices, k, p, saved)
              == _first_position_from(num_indices, total, p, saved) for p, k in enumerate(read))
  epoch, j = divmod(total, num_indices)
  next_index = (epoch * _shard_length(num_indices, process_index, process_count)
                + len(range(process_index, j, process_count)))
  return {"next_index": next_index}, exact


def to_global_batch(batch: dict[str, np.ndarray],
                    sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Assembles every process's local batch into global arrays ``[B · process_count, …]``.

  ``sharding`` must split only the leading (batch) axis, e.g. ``NamedSharding(mesh, P("data"))``,
  so it applies to the ``[B, S]`` and the ``[B]`` entries alike.
  """
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
