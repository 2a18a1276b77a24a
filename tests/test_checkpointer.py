"""Run checkpoints (checkpoints/checkpointer.py): checksummed saves, resume from the newest intact."""

import logging

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wmtp_jax.checkpoints import checkpointer as checkpointing, integrity


def _iterator():
  return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _abstract(state):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _save_steps(tmp_path, steps):
  checkpointer = checkpointing.Checkpointer(tmp_path, every_steps=1, keep=len(steps))
  iterator = _iterator()
  for step in steps:
    next(iterator)
    state = {"step": jnp.int32(step), "w": jnp.arange(4096, dtype=jnp.float32) * step}
    assert checkpointer.save(step, state, iterator, force=True)
  checkpointer.close()
  return state


def _flip_largest(directory):
  target = max((p for p in directory.rglob("*") if p.is_file() and p.name != integrity.MANIFEST),
               key=lambda p: p.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0xFF
  target.write_bytes(bytes(data))


def test_every_saved_step_has_a_manifest_that_verifies(tmp_path):
  _save_steps(tmp_path, [1, 2])
  for step in (1, 2):
    assert integrity.verify(tmp_path / "checkpoints" / str(step))


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest_lists_a_lost_file"])
def test_resume_skips_a_damaged_checkpoint_and_says_why(tmp_path, caplog, damage):
  state = _save_steps(tmp_path, [1, 2])
  newest = tmp_path / "checkpoints" / "2"
  if damage == "flip":
    _flip_largest(newest)
  elif damage == "truncate":
    big = max(newest.rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else -1)
    big.write_bytes(big.read_bytes()[:10])
  else:
    next(p for p in newest.rglob("*") if p.is_file() and p.name != integrity.MANIFEST).unlink()
  checkpointer = checkpointing.Checkpointer(tmp_path, every_steps=1, keep=2)
  iterator = _iterator()
  with caplog.at_level(logging.WARNING, logger="wmtp_jax"):
    step, restored = checkpointer.restore_latest(_abstract(state), iterator, num_indices=1000)
  checkpointer.close()
  assert step == 1
  np.testing.assert_array_equal(restored["w"], np.arange(4096, dtype=np.float32))
  assert next(iterator) == 1  # the data position of step 1 (one element read before it)
  assert (tmp_path / "checkpoints" / "corrupt-2").is_dir() and not newest.exists()
  assert "checkpoints/2 is damaged" in caplog.text


def test_no_checkpoint_means_a_fresh_start(tmp_path):
  checkpointer = checkpointing.Checkpointer(tmp_path, every_steps=1, keep=1)
  assert checkpointer.restore_latest({}, _iterator(), num_indices=1000) == (None, None)
  checkpointer.close()
