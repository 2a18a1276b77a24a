"""Checksum manifests (checkpoints/integrity.py): every kind of damage is named, nothing passes."""

import hashlib

from flax import linen as nn
import jax
import numpy as np
import pytest

from wmtp_jax.checkpoints import integrity, pretrained
from wmtp_jax.models.mtp import MTPConfig, MTPTransformer


def _tree(root):
  (root / "sub").mkdir(parents=True)
  (root / "a.bin").write_bytes(bytes(range(256)) * 64)
  (root / "sub" / "b.json").write_text('{"x": 1}\n')
  (root / "empty").write_bytes(b"")
  return root


def test_manifest_lists_every_file_with_its_hash_and_size(tmp_path):
  root = _tree(tmp_path / "ckpt")
  integrity.write_manifest(root)
  entries = integrity.read_manifest(root)
  assert sorted(entries) == ["a.bin", "empty", "sub/b.json"]
  for name, (digest, size) in entries.items():
    data = (root / name).read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    assert size == len(data)
  assert integrity.verify(root) is True


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_damage_is_an_error_naming_the_file(tmp_path, damage):
  root = _tree(tmp_path / "ckpt")
  integrity.write_manifest(root)
  target = root / "a.bin"
  if damage == "flip":
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
  elif damage == "truncate":
    target.write_bytes(target.read_bytes()[:100])
  else:
    target.unlink()
  with pytest.raises(integrity.CorruptCheckpointError, match="a.bin"):
    integrity.verify(root)


def test_without_manifest(tmp_path):
  root = _tree(tmp_path / "ckpt")
  assert integrity.verify(root, required=False) is False
  with pytest.raises(integrity.CorruptCheckpointError, match="no MANIFEST.sha256"):
    integrity.verify(root)


def test_malformed_manifest_names_the_line(tmp_path):
  root = _tree(tmp_path / "ckpt")
  (root / integrity.MANIFEST).write_text("not a manifest line\n")
  with pytest.raises(integrity.CorruptCheckpointError, match=r"MANIFEST.sha256:1"):
    integrity.verify(root)


def _converted(tmp_path):
  """A tiny MTP model saved as a converted directory (random weights): ``(path, params)``."""
  cfg = MTPConfig(dim=32, n_layers=3, n_heads=2, n_kv_heads=2, vocab_size=64, multiple_of=16,
                  n_future_tokens=2, max_seq_len=32)
  params = nn.meta.unbox(MTPTransformer(cfg).init(jax.random.key(0), np.zeros((1, 4), np.int32)))
  params = jax.tree_util.tree_map(np.asarray, params["params"])
  pretrained.save_params(tmp_path / "converted", cfg, params)
  return tmp_path / "converted", params


def _largest_file(directory):
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_converted_directory_round_trips_and_a_flipped_byte_is_refused(tmp_path):
  path, params = _converted(tmp_path)
  assert (path / pretrained.PARAMS_DIR / integrity.MANIFEST).is_file()
  _, restored = pretrained.load_pretrained(path)
  np.testing.assert_array_equal(restored["tok_embeddings"]["embedding"],
                                params["tok_embeddings"]["embedding"])
  target = _largest_file(path / pretrained.PARAMS_DIR)
  data = bytearray(target.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 4096] = bytes(b ^ 0x5A for b in data[middle:middle + 4096])
  target.write_bytes(bytes(data))
  with pytest.raises(integrity.CorruptCheckpointError, match=target.name):
    pretrained.load_pretrained(path)


def test_missing_metadata_without_a_manifest_is_one_clear_line(tmp_path):
  path, _ = _converted(tmp_path)
  params_dir = path / pretrained.PARAMS_DIR
  (params_dir / integrity.MANIFEST).unlink()  # as written before manifests existed
  (params_dir / "_METADATA").unlink()
  with pytest.raises(integrity.CorruptCheckpointError, match="_METADATA missing or damaged"):
    pretrained.load_pretrained(path)
