"""Tests of wmtp_jax.data.pipeline: shuffling, sharding, drops, checkpoints, pairs, workers."""

import copy
import functools
import json
import re
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.checkpoints import checkpointer as checkpointing
from wmtp_jax.data import jsonl, pipeline, records, samplers, template
from wmtp_jax.data import tokenizer as tokenizer_lib
from wmtp_jax.data.tokenizer import train_bpe_tokenizer

N_RECORDS = 160  # 40 problems × 4 solutions; record i is correct iff i is odd


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """An indexed record file, its tokenizer, a ``max_len`` that ~10 % of the records exceed."""
  root = tmp_path_factory.mktemp("pipeline")
  rng = np.random.default_rng(0)
  rows = [{"instruction": f"Solve problem {i // 4}.", "input": "" if i % 3 else "n = 5",
           "problem_id": f"p{i // 4:03d}", "is_correct": bool(i % 2),
           "output": f"# record {i}\n" + "".join(
               f"x{j} = {j} * n\n" for j in range(int(rng.integers(1, 12))))}
          for i in range(N_RECORDS)]
  jsonl.write_jsonl(root / "train.jsonl", rows)
  tokenizer = train_bpe_tokenizer([template.format_prompt(r) + r["output"] for r in rows], 400,
                                  root / "tokenizer")
  length_fn = functools.partial(template.example_length, tokenizer=tokenizer)
  meta = records.build_index(root / "train.jsonl", tokenizer, length_fn=length_fn)
  lengths = np.asarray([length_fn(r) for r in rows])
  max_len = int(np.percentile(lengths, 90))
  return types.SimpleNamespace(store=records.RecordStore(root / "train.jsonl"),
                               tokenizer=tokenizer, pim=meta["problem_index_map"],
                               max_len=max_len, fits=lengths <= max_len)


def _dataset(env, indices, tokenizer=None, **kwargs):
  args = dict(batch_size=8, max_len=env.max_len, seed=0, num_epochs=1, drop_remainder=False)
  return pipeline.make_dataset(env.store, indices, tokenizer or env.tokenizer, **(args | kwargs))


def _ids(env, batch, prefix=""):
  """Record id of every row, read back from the ``# record {i}`` line of its labelled response."""
  tokens, labels = batch[f"{prefix}tokens"], batch[f"{prefix}labels"]
  texts = [env.tokenizer.decode(row[lab != IGNORE_INDEX]) for row, lab in zip(tokens, labels)]
  return [int(re.match(r"# record (\d+)\n", t).group(1)) for t in texts]


def _flat_ids(env, batches, prefix=""):
  return [i for b in batches for i in _ids(env, b, prefix)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_sampled_records_in_order_with_drop_counts(env):
  indices = samplers.correct_only(env.pim, seed=0)
  batches = list(_dataset(env, indices, shuffle=False, truncation="drop"))
  kept = [i for i in indices if env.fits[i]]
  assert _flat_ids(env, batches) == kept
  assert all(b["tokens"].shape[0] == 8 for b in batches[:-1])
  expected_before, run = [], 0
  for i in indices:
    if env.fits[i]:
      expected_before.append(run)
      run = 0
    else:
      run += 1
  got = np.concatenate([b["dropped_before"] for b in batches])
  np.testing.assert_array_equal(got, expected_before)
  assert got.sum() > 0


def test_shuffle_reshuffles_every_epoch_and_is_seeded(env):
  indices = np.arange(N_RECORDS)
  batches = list(_dataset(env, indices, num_epochs=2))
  ids = _flat_ids(env, batches)
  first, second = ids[:N_RECORDS], ids[N_RECORDS:]
  assert sorted(first) == sorted(second) == list(range(N_RECORDS))
  assert first != second and first != sorted(first)
  _assert_same(batches, list(_dataset(env, indices, num_epochs=2, read_threads=2)))
  other_seed = _flat_ids(env, list(_dataset(env, indices, seed=1)))
  assert sorted(other_seed) == sorted(first) and other_seed != first


def test_process_shards_are_disjoint_and_cover(env):
  indices = samplers.balanced(env.pim, seed=3)
  shards = [_flat_ids(env, list(_dataset(env, indices, process_index=p, process_count=2)))
            for p in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(indices.tolist())
  assert abs(len(shards[0]) - len(shards[1])) <= 1
  with pytest.raises(ValueError, match="process_index"):
    _dataset(env, indices, process_index=2, process_count=2)


def test_iterator_state_restores_mid_epoch(env):
  ds = _dataset(env, np.arange(N_RECORDS), num_epochs=None, drop_remainder=True)
  iterator = iter(ds)
  _take(iterator, 7)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = _take(iterator, 30)  # crosses into the third epoch
  restored = iter(ds)
  restored.set_state(state)
  _assert_same(_take(restored, 30), expected)


def test_iterator_state_restores_through_orbax(env, tmp_path):
  ds = _dataset(env, np.arange(N_RECORDS), num_epochs=None, drop_remainder=True)
  iterator = iter(ds)
  _take(iterator, 5)
  state = {"step": jax.numpy.int32(5)}
  checkpointer = checkpointing.Checkpointer(tmp_path, every_steps=100, keep=1)  # the trainer's
  assert checkpointer.save(5, state, iterator, force=True)
  checkpointer.close()
  expected = _take(iterator, 6)
  checkpointer = checkpointing.Checkpointer(tmp_path, every_steps=100, keep=1)
  restored = iter(ds)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  assert int(checkpointer.restore(5, abstract, restored, num_indices=N_RECORDS)["step"]) == 5
  checkpointer.close()
  _assert_same(_take(restored, 6), expected)


def _layout(env, indices, count, **kwargs):
  """The train iterators of ``count`` processes, global batch 8."""
  return [iter(_dataset(env, indices, batch_size=8 // count, num_epochs=None, drop_remainder=True,
                        process_index=p, process_count=count, **kwargs)) for p in range(count)]


def _global_steps(env, iterators, n):
  """Record ids of each of ``n`` global batches (every process's batch of the step), sorted."""
  return [sorted(i for it in iterators for i in _ids(env, next(it))) for _ in range(n)]


def _resharded(env, indices, states, count, **kwargs):
  iterators = _layout(env, indices, count, **kwargs)
  exact = set()
  for p, it in enumerate(iterators):
    state, is_exact = pipeline.reshard_state(states, len(indices), process_index=p,
                                             process_count=count)
    it.set_state(state)
    exact.add(is_exact)
  return iterators, exact


def test_iterator_state_reshards_across_process_counts(env):
  indices = np.arange(N_RECORDS)  # divisible by 1, 2 and 4; no record dropped: layouts agree
  one = _global_steps(env, _layout(env, indices, 1), 26)  # 20 steps per epoch
  two = _layout(env, indices, 2)
  assert _global_steps(env, two, 7) == one[:7]
  states = [json.loads(json.dumps(it.get_state())) for it in two]
  for count in (1, 4):
    iterators, exact = _resharded(env, indices, states, count)
    assert exact == {True}
    assert _global_steps(env, iterators, 19) == one[7:], count  # across the epoch end
  iterators, exact = _resharded(env, indices, [{"next_index": 7 * 8}], 2)  # 1 process → 2
  assert exact == {True} and _global_steps(env, iterators, 3) == one[7:10]

  # Dropped records: the two shards have read different numbers of elements by step 7, so the
  # resharded stream restarts at their total and rereads / skips the few elements in between.
  two = _layout(env, indices, 2, truncation="drop")
  _global_steps(env, two, 7)
  states = [it.get_state() for it in two]
  assert states[0] != states[1]
  assert _resharded(env, indices, states, 1, truncation="drop")[1] == {False}
  with pytest.raises(ValueError, match="config.data.workers"):
    pipeline.reshard_state([{"next_index_in_cycle": 0}], N_RECORDS, process_index=0,
                           process_count=2)


def test_pairwise_batches(env):
  pairs = samplers.pairs(env.pim, seed=0, max_pairs_per_problem=2)
  batches = list(_dataset(env, pairs, max_len=512, bucket_lengths=(96, 128, 512)))
  assert {"pos_tokens", "neg_tokens", "pos_is_correct", "neg_is_correct",
          "dropped_before"} <= set(batches[0])
  pos, neg = _flat_ids(env, batches, "pos_"), _flat_ids(env, batches, "neg_")
  assert sorted(zip(pos, neg)) == sorted(map(tuple, pairs.tolist()))
  assert all(p % 2 == 1 and n % 2 == 0 and p // 4 == n // 4 for p, n in zip(pos, neg))
  for b in batches:
    assert b["pos_tokens"].shape == b["neg_tokens"].shape
    assert b["pos_tokens"].shape[1] in (96, 128, 512)
    assert (b["pos_is_correct"] == 1).all() and (b["neg_is_correct"] == 0).all()


def test_worker_prefetch_matches_in_process(env):
  indices = np.arange(N_RECORDS)
  expected = list(_dataset(env, indices))
  iterator = iter(_dataset(env, indices, num_workers=1))
  try:
    _assert_same(list(iterator), expected)
  finally:
    iterator.close()


def test_to_global_batch(env):
  batch = next(iter(_dataset(env, np.arange(16))))
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
  global_batch = pipeline.to_global_batch(batch, sharding)
  assert global_batch.keys() == batch.keys()
  for key, value in global_batch.items():
    assert isinstance(value, jax.Array) and value.sharding == sharding
    np.testing.assert_array_equal(np.asarray(value), batch[key])


def test_span_masks_are_carried_through(small_dataset):
  """Records with spans (the synthetic dataset): every batch, single or pairwise, holds the masks
  that template.encode gives each of its rows, padded with 0."""
  store = records.RecordStore(small_dataset / "train.jsonl")
  tok = tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")
  pim = store.meta["problem_index_map"]
  keys = ("critical_mask", "mutated_mask")
  pairs = samplers.pairs(pim, seed=0, max_pairs_per_problem=1)
  for indices, prefixes in ((np.arange(40), ("",)), (pairs, ("pos_", "neg_"))):
    rows = np.asarray(indices).reshape(len(indices), -1)
    batches = list(pipeline.make_dataset(store, indices, tok, batch_size=8, max_len=512, seed=0,
                                         num_epochs=1, shuffle=False, drop_remainder=False,
                                         process_count=1, process_index=0))
    assert sum(len(b["dropped_before"]) for b in batches) == len(rows)
    n = 0
    for batch in batches:
      for side, prefix in enumerate(prefixes):
        for r in range(len(batch["dropped_before"])):
          example = template.encode(store[int(rows[n + r, side])], tok, 512)
          for key in keys:
            mask = batch[prefix + key]
            assert mask.dtype == np.int32 and mask.shape == batch[prefix + "tokens"].shape
            np.testing.assert_array_equal(mask[r, :len(example)], example.span_masks[key])
            assert not mask[r, len(example):].any()
      n += len(batch["dropped_before"])
    assert any(batch[prefixes[-1] + "mutated_mask"].any() for batch in batches)


def test_tokenizer_without_pad_token_pads_with_eos(env):
  """LLaMA-3 tokenizers have no pad token: rows are padded with eos (the reference's pad = eos),
  everything but the padded token ids is as with a pad token; neither token is an error."""
  tok = copy.deepcopy(env.tokenizer)
  tok.pad_token = None
  assert tok.pad_token_id is None and tok.eos_token_id is not None
  assert env.tokenizer.pad_token_id != tok.eos_token_id
  indices = np.flatnonzero(env.fits)[:16]
  with_pad = next(iter(_dataset(env, indices, shuffle=False)))
  without = next(iter(_dataset(env, indices, tokenizer=tok, shuffle=False)))
  padding = with_pad["attention_mask"] == 0
  assert padding.any()
  np.testing.assert_array_equal(without["tokens"][padding], tok.eos_token_id)
  np.testing.assert_array_equal(without["tokens"][~padding], with_pad["tokens"][~padding])
  for key in with_pad.keys() - {"tokens"}:
    np.testing.assert_array_equal(without[key], with_pad[key], err_msg=key)
  tok.eos_token = None
  with pytest.raises(ValueError, match="neither a pad nor an eos token"):
    template.pad_id(tok)
