"""Checks a converted directory against the model it came from (``python -m wmtp_jax.convert
verify``): the source model in PyTorch and ours in JAX, both in fp32, on the same random tokens.

Sources: ``hf`` (a HF ``LlamaForCausalLM`` directory, run by ``transformers``) or ``meta`` (Meta's
``params.json`` + ``consolidated.pth``, run by the transcription ``torch_mtp.TorchMTP``). The
tokens are ``[B, S]`` uniform random ids, row ``b`` of length ``S − b·⌊S/(2B)⌋`` (right padded,
so the key padding mask is exercised too); ``S`` defaults to ``original_max_position_embeddings
+ 32`` for a model with RoPE scaling (positions beyond the original context) and 64 otherwise.
A HF directory exported from an MTP model (``export-hf``: the next-token path plus
``extra_heads.safetensors``) runs in ``transformers`` once per head: head ``k`` is the
``LlamaForCausalLM`` whose last layer is the extra head block ``k`` (Meta's wiring: every head
reads the trunk, then the shared norm and output).

The check is ``numpy.allclose``'s, ``|ours − source| ≤ tol + tol·|source|`` at every real
(unpadded) position of every compared head, ``tol`` = 1e-4 by default (the fp32 tolerance of the
parity tests). A checkpoint converted to a narrower dtype than its source (``--dtype bf16`` of an
fp32 / fp16 source) differs by that rounding and fails, as it should: verify an fp32 conversion.

Host memory: one model at a time in fp32 (the source runs, its logits are kept, it is freed,
then ours loads), plus two ``[B, S, n, V]`` fp32 logits arrays and, in ours, the ``[B, Q, S, S]``
attention scores of a layer: at LLaMA-3's default ``S`` = 8224 that is ~8 GB of logits per model
and ~17 GB of scores for ``B`` = 2 (``--batch 1`` halves both). Measured (``python -m
wmtp_jax.bench convert --source llama3``): LLaMA-3.2-1B's shape at 2 × 256 tokens, 278 s and
7.6 GB peak on a loaded 2-core host.
"""

import gc
import time
from pathlib import Path

import jax
import numpy as np
import torch
import transformers

from wmtp_jax.checkpoints import pretrained
from wmtp_jax.checkpoints.export import EXTRA_HEADS_FILE
from wmtp_jax.checkpoints.sources import TensorFiles, hf_files, meta_files, to_torch
from wmtp_jax.checkpoints.torch_mtp import TorchMTP
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

DEFAULT_TOLERANCE = 1e-4
BEYOND_CONTEXT = 32  # default positions past ``original_max_position_embeddings``


def default_seq_len(config: MTPConfig | LlamaConfig) -> int:
  """``S`` of the check: past the original context of a RoPE-scaled model, else 64."""
  scaling = getattr(config, "rope_scaling", None)
  return scaling.original_max_position_embeddings + BEYOND_CONTEXT if scaling else 64


def random_batch(vocab_size: int, seq_len: int, batch: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(tokens_BxS int64, attention_mask_BxS int32)``: random ids, row ``b`` of length
  ``seq_len − b·⌊seq_len/(2·batch)⌋`` (module docstring)."""
  rng = np.random.default_rng(seed)
  tokens_BxS = rng.integers(0, vocab_size, size=(batch, seq_len))
  lengths_B = seq_len - np.arange(batch) * (seq_len // (2 * batch))
  mask_BxS = (np.arange(seq_len)[None, :] < lengths_B[:, None]).astype(np.int32)
  return tokens_BxS, mask_BxS


def _extra_heads(src: Path) -> list[dict[str, torch.Tensor]]:
  """The fp32 state dicts (``LlamaDecoderLayer`` keys) of the extra heads 1 … n−1 in
  ``src/extra_heads.safetensors`` (none without the file)."""
  if not (src / EXTRA_HEADS_FILE).is_file():
    return []
  heads: dict[int, dict[str, torch.Tensor]] = {}
  for key, array in TensorFiles([src / EXTRA_HEADS_FILE]):
    prefix, index, sub_key = key.split(".", 2)
    if prefix != "extra_heads" or not index.isdigit():
      raise ValueError(f"{src / EXTRA_HEADS_FILE}: unexpected tensor {key!r}")
    heads.setdefault(int(index), {})[sub_key] = to_torch(array).float()
  if sorted(heads) != list(range(len(heads))):
    raise ValueError(f"{src / EXTRA_HEADS_FILE}: extra heads {sorted(heads)} are not 0 … n−2")
  return [heads[k] for k in range(len(heads))]


def _hf_logits(src: Path, tokens_BxS: np.ndarray, mask_BxS: np.ndarray) -> np.ndarray:
  """``[B, S, n, V]`` fp32 logits of ``transformers``' model of the HF directory ``src``, one
  forward per head (module docstring; ``n`` = 1 without extra heads)."""
  hf_files(src)  # a clear error for a directory without config / weights
  model = transformers.LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
  logits = []
  for head_state in [None, *_extra_heads(src)]:
    if head_state is not None:  # strict: every key of the block, nothing else
      model.model.layers[-1].load_state_dict(head_state, strict=True)
    with torch.no_grad():
      logits.append(model(input_ids=torch.from_numpy(tokens_BxS),
                          attention_mask=torch.from_numpy(mask_BxS)).logits.float().numpy())
  return np.stack(logits, axis=2)


def _meta_logits(src: Path, tokens_BxS: np.ndarray, mask_BxS: np.ndarray) -> np.ndarray:
  """``[B, S, n, V]`` fp32 logits of ``TorchMTP`` with the weights of the Meta directory ``src``
  (strict: a missing or unexpected key is an error)."""
  params_json, weights = meta_files(src)
  config = MTPConfig.from_params_json(params_json)
  with torch.device("meta"):  # no random init: the checkpoint's tensors are assigned
    model = TorchMTP(config)
  state_dict = {k: torch.from_numpy(v.astype(np.float32)) for k, v in TensorFiles(weights)}
  model.load_state_dict(state_dict, strict=True, assign=True)
  with torch.no_grad():
    return model.eval()(torch.from_numpy(tokens_BxS), torch.from_numpy(mask_BxS)).numpy()


def _our_logits(converted: Path, tokens_BxS: np.ndarray, mask_BxS: np.ndarray) -> np.ndarray:
  """``[B, S, n, V]`` fp32 logits of our model of the converted directory (``n`` = 1 for a
  LLaMA)."""
  kind = pretrained.stored_kind(converted)
  if kind == "value":
    raise ValueError(f"{converted}: holds {pretrained.KIND_NAMES[kind]} (no logits to compare)")
  config, params = pretrained.load_pretrained(converted, param_dtype="float32", dtype="float32")
  model_cls = pretrained.KINDS[kind][1]
  logits = jax.jit(model_cls(config).apply)({"params": params}, tokens_BxS.astype(np.int32),
                                            mask_BxS)
  logits = np.asarray(logits, dtype=np.float32)
  return logits if isinstance(config, MTPConfig) else logits[:, :, None, :]


def compare(want_BxSxnxV: np.ndarray, got_BxSxnxV: np.ndarray, mask_BxS: np.ndarray,
            tolerance: float) -> list[dict]:
  """Per head ``k``: ``{"head", "max_abs_diff", "max_abs_logit", "worst_over_allowed",
  "passed"}`` over the real positions; ``worst_over_allowed`` is the largest
  ``|Δ| / (tol + tol·|want|)`` (≤ 1 passes)."""
  valid = mask_BxS.astype(bool)
  heads = []
  for k in range(want_BxSxnxV.shape[2]):
    want_MxV, got_MxV = want_BxSxnxV[:, :, k][valid], got_BxSxnxV[:, :, k][valid]
    diff_MxV = np.abs(got_MxV - want_MxV)
    ratio = float(np.max(diff_MxV / (tolerance + tolerance * np.abs(want_MxV))))
    heads.append({"head": k, "max_abs_diff": float(diff_MxV.max()),
                  "max_abs_logit": float(np.abs(want_MxV).max()),
                  "worst_over_allowed": round(ratio, 4), "passed": ratio <= 1.0})
  return heads


def verify(converted: str | Path, *, hf: str | Path | None = None, meta: str | Path | None = None,
           seq_len: int | None = None, batch: int = 2, seed: int = 0,
           tolerance: float = DEFAULT_TOLERANCE) -> dict:
  """Runs the source (exactly one of ``hf``, ``meta``) and the converted model on the same
  random tokens and compares their logits per head (module docstring). Returns the summary:
  ``{"passed", "tolerance", "source", "converted", "tokens": [B, S], "heads": [per head],
  "seconds": {"source", "converted"}}``."""
  if (hf is None) == (meta is None):
    raise ValueError("verify: give exactly one source, --hf HF_DIR or --meta META_DIR")
  converted = pretrained.resolve(converted)
  config = pretrained.read_config(converted)
  if meta is not None and not isinstance(config, MTPConfig):
    raise ValueError(f"{converted}: holds {pretrained.KIND_NAMES[pretrained.kind_of(config)]}, "
                     f"not an MTP model: --meta cannot be its source")
  seq_len = seq_len or default_seq_len(config)
  if seq_len < 2 * batch or batch < 1:
    raise ValueError(f"verify: --seq-len={seq_len} must be ≥ 2·--batch={2 * batch} (batch ≥ 1)")
  tokens_BxS, mask_BxS = random_batch(config.vocab_size, seq_len, batch, seed)

  start = time.perf_counter()
  source = Path(hf if hf is not None else meta)
  if hf is not None:
    want = _hf_logits(source, tokens_BxS, mask_BxS)
  else:
    want = _meta_logits(source, tokens_BxS, mask_BxS)
  gc.collect()  # the source model is gone before ours loads
  source_seconds = time.perf_counter() - start
  start = time.perf_counter()
  got = _our_logits(converted, tokens_BxS, mask_BxS)
  converted_seconds = time.perf_counter() - start

  if want.shape[2] != got.shape[2]:
    raise ValueError(f"{source} has {want.shape[2]} heads, {converted} has {got.shape[2]}: not "
                     f"its source (an MTP export-hf carries {EXTRA_HEADS_FILE})")
  heads = compare(want, got, mask_BxS, tolerance)
  return {"passed": all(h["passed"] for h in heads), "tolerance": tolerance,
          "source": {"format": "hf" if hf is not None else "meta", "path": str(source)},
          "converted": str(converted), "tokens": [batch, seq_len], "heads": heads,
          "seconds": {"source": round(source_seconds, 2),
                      "converted": round(converted_seconds, 2)}}
