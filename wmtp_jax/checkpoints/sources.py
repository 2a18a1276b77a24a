"""The files of a checkpoint conversion: Meta / Hugging Face source directories read tensor by
tensor, zero-copy torch ↔ numpy views, the tokenizer to carry and the new destination directory.

Torch files are read through ``torch.load(mmap=True)`` with each tensor's pages released once it
is converted, safetensors through ``safe_open(backend="pread")``, so a source is never held whole
(``python -m wmtp_jax.convert``, ``wmtp_jax.checkpoints.export``).
"""

import contextlib
import ctypes
import json
import mmap
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from safetensors import safe_open

from wmtp_jax.checkpoints import pretrained

_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_LIBC = ctypes.CDLL(None)
_LIBC.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def to_numpy(t: torch.Tensor) -> np.ndarray:
  """A zero-copy numpy view of a CPU tensor; bfloat16 becomes ``ml_dtypes.bfloat16``."""
  t = t.detach()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(jnp.bfloat16)
  return t.numpy()


def to_torch(a: np.ndarray) -> torch.Tensor:
  """Inverse of ``to_numpy`` (zero-copy)."""
  if a.dtype == jnp.bfloat16:
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(a)


def _drop_pages(t: torch.Tensor) -> None:
  """Release the resident pages of an mmap'd tensor (``madvise(MADV_DONTNEED)``) once it has been
  copied, so that streaming a file does not accumulate it in RSS. Safe on ``torch.load``'s private
  file mapping: pages touched again are re-read from the unchanged file."""
  storage = t.untyped_storage()
  start = -(-storage.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE
  end = (storage.data_ptr() + storage.nbytes()) // mmap.PAGESIZE * mmap.PAGESIZE
  if end > start:
    _LIBC.madvise(start, end - start, mmap.MADV_DONTNEED)


def _torch_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
  state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  if not isinstance(state_dict, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in state_dict.values()):
    raise ValueError(f"{path}: expected a flat state dict of tensors")
  return state_dict


class TensorFiles:
  """Tensor-by-tensor reader over checkpoint files: torch zips (``.pth``, ``.bin``) through
  ``torch.load(mmap=True, weights_only=True)``, ``.safetensors`` through ``safe_open(backend=
  "pread")``. Iterating yields ``(key, numpy array)``: a view of the mapped file whose resident
  pages are released when the next tensor is requested (so copy it first; reading it later still
  works, from disk), or a fresh buffer read with ``pread``."""

  def __init__(self, files: list[Path]):
    self.files = files

  def specs(self) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype name)}`` of every tensor, without reading tensor data; a key stored
    in two files is an error."""
    specs, origin = {}, {}
    for file in self.files:
      if file.suffix == ".safetensors":
        with safe_open(file, framework="pt", backend="pread") as f:
          found = {k: (tuple(f.get_slice(k).get_shape()),
                       _SAFETENSORS_DTYPES.get(f.get_slice(k).get_dtype(),
                                               f.get_slice(k).get_dtype()))
                   for k in f.keys()}
      else:
        found = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch."))
                 for k, t in _torch_state_dict(file).items()}
      twice = sorted(set(found) & set(specs))
      if twice:
        raise ValueError(f"{file}: keys {twice} are also in {origin[twice[0]]}")
      specs.update(found)
      origin.update(dict.fromkeys(found, file))
    return specs

  def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
    for file in self.files:
      if file.suffix == ".safetensors":
        with safe_open(file, framework="pt", backend="pread") as f:
          for key in f.keys():
            yield key, to_numpy(f.get_tensor(key))
      else:
        for key, t in _torch_state_dict(file).items():
          yield key, to_numpy(t)
          _drop_pages(t)


def meta_files(src: Path) -> tuple[Path, list[Path]]:
  """``params.json`` and the one ``consolidated*.pth`` of a Meta checkpoint directory."""
  params_json = src / "params.json"
  if not params_json.is_file():
    raise FileNotFoundError(f"{src}: no params.json (a Meta checkpoint directory holds "
                            f"params.json and consolidated.pth)")
  weights_files = sorted(src.glob("consolidated*.pth"))
  if not weights_files:
    raise FileNotFoundError(f"{src}: no consolidated.pth")
  if len(weights_files) > 1:
    raise ValueError(f"{src}: {len(weights_files)} model-parallel shards "
                     f"{[f.name for f in weights_files]}; merge them into one consolidated.pth")
  return params_json, weights_files


def hf_files(src: Path) -> tuple[Path, list[Path]]:
  """``config.json`` and the weight files of a HF checkpoint directory (safetensors first)."""
  config_json = src / "config.json"
  if not config_json.is_file():
    raise FileNotFoundError(f"{src}: no config.json")
  for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
    if (src / index).is_file():
      names = sorted(set(json.loads((src / index).read_text())["weight_map"].values()))
      missing = [n for n in names if not (src / n).is_file()]
      if missing:
        raise FileNotFoundError(f"{src / index} names missing files {missing}")
      return config_json, [src / n for n in names]
  for single in ("model.safetensors", "pytorch_model.bin"):
    if (src / single).is_file():
      return config_json, [src / single]
  raise FileNotFoundError(f"{src}: no weights (looked for model.safetensors[.index.json] and "
                          f"pytorch_model.bin[.index.json])")


def find_tokenizer(fmt: str, src: Path, explicit: str | None) -> Path:
  """The tokenizer to carry: ``--tokenizer``, else the source directory's tokenizer files (for
  ``meta``: ``tokenizer.model`` in the directory or its parent)."""
  if explicit is not None:
    if not Path(explicit).exists():
      raise FileNotFoundError(f"--tokenizer {explicit}: no such file or directory")
    return Path(explicit)
  if fmt == "meta":
    candidates = [src / "tokenizer.model", src.parent / "tokenizer.model"]
    found = [c for c in candidates if c.is_file()]
  else:
    candidates = [src / n for n in pretrained.TOKENIZER_FILES]
    found = [src] if any(c.is_file() for c in candidates) else []
  if not found:
    raise FileNotFoundError(f"no tokenizer found (looked for {[str(c) for c in candidates]}); "
                            f"pass --tokenizer PATH")
  return found[0]


@contextlib.contextmanager
def new_dir(dst: Path) -> Iterator[Path]:
  """``with new_dir(dst):`` creates the destination ``dst`` (new, or an existing empty directory)
  for the body to fill, and removes it again if the body fails."""
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise FileExistsError(f"{dst} exists and is not an empty directory")
  dst.mkdir(parents=True, exist_ok=True)
  try:
    yield dst
  except BaseException:
    shutil.rmtree(dst)
    raise
