"""Name and layout mapping between PyTorch state dicts (Meta MTP, HF LLaMA) and our Flax trees.

This is the one place that knows both layouts. Each torch key maps to an ``Entry``: the Flax path,
the torch shape, and a ``kind`` saying how the tensor is re-laid out:

  ``copy``         embeddings ``[V, D]`` and norm weights ``[D]``, unchanged
  ``linear``       torch Linear ``[out, in]`` → Flax kernel ``[in, out]``
  ``q`` / ``kv``   ``[Q·H, D]`` → ``[D, Q, H]`` (query) / ``[K·H, D]`` → ``[D, K, H]`` (key, value)
  ``q_meta`` / ``k_meta``  the same after the RoPE permutation below
  ``o``            ``[D, Q·H]`` → ``[Q, H, D]``

(shape letters: the legend of the package docstring, ``wmtp_jax``).

``to_flax`` applies a kind, ``from_flax`` (beside it) is its exact inverse; ``tensors_to_flax`` and
``flax_to_tensors`` stream whole checkpoints through them one tensor at a time.

Entry tables: ``meta_entries`` (Meta's MTP ``consolidated.pth``, read and written), ``hf_entries``
(a HF ``LlamaForCausalLM``, read and written) and ``mtp_hf_entries`` (an MTP model written as a HF
``LlamaForCausalLM`` of the next-token path plus a separate table of the extra heads).

**RoPE layout** (DESIGN §4): our attention uses rotate-half (dimension ``i`` paired with
``i + H/2``, as in HF). Meta pairs adjacent dimensions ``(2i, 2i+1)``, so Meta's ``wq``/``wk`` rows
are permuted per head with ``interleaved_to_rotate_half`` on the way in (and back on the way out).
HF checkpoints are already rotate-half. Both layouts give identical attention scores.

Loading is strict: a missing, unexpected or wrongly shaped key is an error listing the names;
``*.rotary_emb.inv_freq`` buffers (older HF checkpoints) are skipped on purpose. ``check_shapes``
is the one strict name → shape comparison (also used for Flax trees by
``wmtp_jax.checkpoints.pretrained``).
"""

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from wmtp_jax.models.layers import BlockConfig
from wmtp_jax.models.llama import LlamaConfig
from wmtp_jax.models.mtp import MTPConfig

SKIPPED_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


@dataclasses.dataclass(frozen=True)
class Entry:
  path: tuple[str, ...]     # Flax parameter path under ``params``
  kind: str                 # layout transform, see the module docstring
  shape: tuple[int, ...]    # torch shape


def interleaved_to_rotate_half(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  """Permute the rows of a Meta ``wq``/``wk`` ``[n_heads·H, in]`` from (2i, 2i+1) to (i, i+H/2)."""
  out, inp = w_OxI.shape
  return w_OxI.reshape(n_heads, out // n_heads // 2, 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


def rotate_half_to_interleaved(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of ``interleaved_to_rotate_half``."""
  out, inp = w_OxI.shape
  return w_OxI.reshape(n_heads, 2, out // n_heads // 2, inp).transpose(0, 2, 1, 3).reshape(out, inp)


def _block_entries(prefix: str, path: tuple[str, ...], b: BlockConfig, names: Mapping[str, str],
                   rope_kinds: tuple[str, str]) -> dict[str, Entry]:
  """Entries of one block; ``names`` maps our module names to the torch sub-keys."""
  d, f, nh, kh = b.dim, b.ffn_hidden, b.n_heads * b.head_dim, b.n_kv_heads * b.head_dim
  spec = {
      ("attention", "wq", "kernel"): (rope_kinds[0], (nh, d)),
      ("attention", "wk", "kernel"): (rope_kinds[1], (kh, d)),
      ("attention", "wv", "kernel"): ("kv", (kh, d)),
      ("attention", "wo", "kernel"): ("o", (d, nh)),
      ("feed_forward", "w1", "kernel"): ("linear", (f, d)),
      ("feed_forward", "w3", "kernel"): ("linear", (f, d)),
      ("feed_forward", "w2", "kernel"): ("linear", (d, f)),
      ("attention_norm", "weight"): ("copy", (d,)),
      ("ffn_norm", "weight"): ("copy", (d,)),
  }
  return {f"{prefix}.{names['/'.join(sub)]}": Entry(path + sub, kind, shape)
          for sub, (kind, shape) in spec.items()}


_META_BLOCK = {
    "attention/wq/kernel": "attention.wq.weight", "attention/wk/kernel": "attention.wk.weight",
    "attention/wv/kernel": "attention.wv.weight", "attention/wo/kernel": "attention.wo.weight",
    "feed_forward/w1/kernel": "feed_forward.w1.weight",
    "feed_forward/w3/kernel": "feed_forward.w3.weight",
    "feed_forward/w2/kernel": "feed_forward.w2.weight",
    "attention_norm/weight": "attention_norm.weight", "ffn_norm/weight": "ffn_norm.weight",
}
_HF_BLOCK = {
    "attention/wq/kernel": "self_attn.q_proj.weight",
    "attention/wk/kernel": "self_attn.k_proj.weight",
    "attention/wv/kernel": "self_attn.v_proj.weight",
    "attention/wo/kernel": "self_attn.o_proj.weight",
    "feed_forward/w1/kernel": "mlp.gate_proj.weight",
    "feed_forward/w3/kernel": "mlp.up_proj.weight",
    "feed_forward/w2/kernel": "mlp.down_proj.weight",
    "attention_norm/weight": "input_layernorm.weight",
    "ffn_norm/weight": "post_attention_layernorm.weight",
}


def _next_token_blocks(cfg: MTPConfig, prefix: str) -> list[tuple[str, str]]:
  """``(state-dict prefix, Flax block name)`` of an MTP model's next-token path: the trunk blocks
  then head 0 as ``{prefix}.0 … {prefix}.{n_trunk}`` (Meta's ``layers``, HF's ``model.layers``)."""
  names = [f"trunk_{i}" for i in range(cfg.n_trunk_layers)] + ["head_0"]
  return [(f"{prefix}.{i}", name) for i, name in enumerate(names)]


def meta_entries(cfg: MTPConfig) -> dict[str, Entry]:
  """Entries of Meta's MTP ``consolidated.pth``: ``layers`` holds the trunk then head 0
  (``n_layers − n_future + 1`` blocks), ``extra_heads`` heads 1 … n_future − 1."""
  b, v, d = cfg.block, cfg.vocab_size, cfg.dim
  entries = {"tok_embeddings.weight": Entry(("tok_embeddings", "embedding"), "copy", (v, d)),
             "norm.weight": Entry(("norm", "weight"), "copy", (d,)),
             "output.weight": Entry(("output", "kernel"), "linear", (v, d))}
  blocks = _next_token_blocks(cfg, "layers")
  blocks += [(f"extra_heads.{k - 1}", f"head_{k}") for k in range(1, cfg.n_future_tokens)]
  for prefix, name in blocks:
    entries.update(_block_entries(prefix, (name,), b, _META_BLOCK, ("q_meta", "k_meta")))
  return entries


def hf_entries(cfg: LlamaConfig, *, lm_head: bool = True) -> dict[str, Entry]:
  """Entries of a HF ``LlamaForCausalLM`` state dict under our ``model/…`` (+ ``lm_head``) tree.
  A model with ``tie_word_embeddings`` has no ``lm_head.weight`` (HF ties it to
  ``model.embed_tokens.weight`` and ``save_pretrained`` writes the table once)."""
  b, v, d = cfg.block, cfg.vocab_size, cfg.hidden_size
  entries = {"model.embed_tokens.weight": Entry(("model", "embed_tokens", "embedding"), "copy",
                                                (v, d)),
             "model.norm.weight": Entry(("model", "norm", "weight"), "copy", (d,))}
  if lm_head and not cfg.tie_word_embeddings:
    entries["lm_head.weight"] = Entry(("lm_head", "kernel"), "linear", (v, d))
  for i in range(cfg.num_hidden_layers):
    entries.update(_block_entries(f"model.layers.{i}", ("model", f"layers_{i}"), b, _HF_BLOCK,
                                  ("q", "kv")))
  return entries


def mtp_hf_entries(cfg: MTPConfig) -> tuple[dict[str, Entry], dict[str, Entry]]:
  """An MTP model as HF tensors: ``(next-token path, extra heads)``.

  The first table is a ``LlamaForCausalLM`` with ``n_layers − n_future + 1`` layers (the trunk, then
  head 0 as ``model.layers.{n_trunk}``; the shared norm is ``model.norm``, the shared output
  ``lm_head``). The second holds head k = 1 … n_future − 1 as ``extra_heads.{k−1}.<sub-key>`` with
  the sub-keys of a ``model.layers.{i}`` block (``self_attn.q_proj.weight``, …, in HF's rotate-half
  layout), so each loads into a ``LlamaDecoderLayer`` after stripping the prefix.
  """
  b, v, d = cfg.block, cfg.vocab_size, cfg.dim
  main = {"model.embed_tokens.weight": Entry(("tok_embeddings", "embedding"), "copy", (v, d)),
          "model.norm.weight": Entry(("norm", "weight"), "copy", (d,)),
          "lm_head.weight": Entry(("output", "kernel"), "linear", (v, d))}
  for prefix, name in _next_token_blocks(cfg, "model.layers"):
    main.update(_block_entries(prefix, (name,), b, _HF_BLOCK, ("q", "kv")))
  extra = {}
  for k in range(1, cfg.n_future_tokens):
    extra.update(_block_entries(f"extra_heads.{k - 1}", (f"head_{k}",), b, _HF_BLOCK, ("q", "kv")))
  return main, extra


def to_flax(entry: Entry, w: np.ndarray, b: BlockConfig) -> np.ndarray:
  """Re-lay one torch tensor as its Flax parameter (a view where the layout allows)."""
  h = b.head_dim
  match entry.kind:
    case "copy":
      return w
    case "linear":
      return w.T
    case "q" | "kv":
      return w.T.reshape(w.shape[1], w.shape[0] // h, h)
    case "q_meta":
      return to_flax(Entry(entry.path, "q", entry.shape), interleaved_to_rotate_half(w, b.n_heads),
                     b)
    case "k_meta":
      return to_flax(Entry(entry.path, "kv", entry.shape),
                     interleaved_to_rotate_half(w, b.n_kv_heads), b)
    case "o":
      return w.T.reshape(w.shape[1] // h, h, w.shape[0])
  raise ValueError(f"unknown entry kind {entry.kind!r}")


def from_flax(entry: Entry, w: np.ndarray, b: BlockConfig) -> np.ndarray:
  """Exact inverse of ``to_flax``: one Flax parameter back in its torch layout ``entry.shape``."""
  match entry.kind:
    case "copy":
      return w
    case "linear":
      return w.T
    case "q" | "kv":  # [D, Q, H] → [Q·H, D]
      return w.reshape(w.shape[0], -1).T
    case "q_meta":
      return rotate_half_to_interleaved(from_flax(Entry(entry.path, "q", entry.shape), w, b),
                                        b.n_heads)
    case "k_meta":
      return rotate_half_to_interleaved(from_flax(Entry(entry.path, "kv", entry.shape), w, b),
                                        b.n_kv_heads)
    case "o":  # [Q, H, D] → [D, Q·H]
      return w.reshape(-1, w.shape[-1]).T
  raise ValueError(f"unknown entry kind {entry.kind!r}")


def check_shapes(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]],
                 where: str, *, what: str,
                 hint: Callable[[Iterable[str]], str | None] | None = None) -> None:
  """Strict name → shape comparison: a ``ValueError`` listing every missing, unexpected and wrongly
  shaped name. ``what`` names the checked thing (``state dict``, ``params``); ``hint(got names)``
  may add an explanation when names are missing or unexpected."""
  missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
  wrong = sorted(f"{k}: {tuple(got[k])} (expected {tuple(expected[k])})"
                 for k in set(expected) & set(got) if tuple(got[k]) != tuple(expected[k]))
  problems = []
  if missing:
    problems.append(f"missing keys {missing}")
  if unexpected:
    problems.append(f"unexpected keys {unexpected}")
  if wrong:
    problems.append(f"wrongly shaped {wrong}")
  if (missing or unexpected) and hint is not None and (text := hint(got)):
    problems.append(text)
  if problems:
    raise ValueError(f"{where}: {what} does not match the model: " + "; ".join(problems))


def _meta_hint(keys: Iterable[str]) -> str | None:
  """For a Meta MTP state dict: the ``n_future_tokens`` and ``n_layers`` its keys imply."""
  count = lambda pattern: len({m.group(1) for k in keys if (m := re.match(pattern, k))})
  n_blocks, n_extra = count(r"layers\.(\d+)\."), count(r"extra_heads\.(\d+)\.")
  if not n_extra:
    return None
  return (f"the file holds {n_blocks} `layers` blocks and {n_extra} `extra_heads`, "
          f"i.e. n_future_tokens={n_extra + 1}, n_layers={n_blocks + n_extra}")


def check_keys(entries: Mapping[str, Entry], shapes: Mapping[str, tuple[int, ...]], where: str):
  """Strict key and shape check of a state dict (``shapes``: torch key → shape) against ``entries``;
  ``*.rotary_emb.inv_freq`` buffers are skipped."""
  got = {k: tuple(s) for k, s in shapes.items() if not SKIPPED_KEYS.match(k)}
  check_shapes({k: e.shape for k, e in entries.items()}, got, where, what="state dict",
               hint=_meta_hint)


def tensors_to_flax(entries: Mapping[str, Entry], tensors: Iterable[tuple[str, np.ndarray]],
                    b: BlockConfig, *, dtype=None) -> dict:
  """Convert ``(torch key, tensor)`` pairs, consumed one at a time, into a nested Flax ``params``
  dict of fresh C-contiguous arrays (cast to ``dtype`` if given). The keys must have passed
  ``check_keys``; skipped buffers are ignored. Each tensor is copied before the next is requested,
  so a streaming reader may release its source right after."""
  params: dict = {}
  for key, w in tensors:
    if SKIPPED_KEYS.match(key):
      continue
    entry = entries[key]
    node = params
    for part in entry.path[:-1]:
      node = node.setdefault(part, {})
    node[entry.path[-1]] = np.array(to_flax(entry, np.asarray(w), b), dtype=dtype, order="C")
  return params


def flax_to_tensors(entries: Mapping[str, Entry], params: Mapping[tuple[str, ...], np.ndarray],
                    b: BlockConfig, *, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
  """Yield ``(torch key, C-contiguous tensor)`` in ``entries`` order, reading ``params[path]`` (a
  flat mapping from Flax path to array; a lazy one reads each tensor only when asked) one at a
  time."""
  for key, entry in entries.items():
    w = from_flax(entry, np.asarray(params[entry.path]), b)
    yield key, np.ascontiguousarray(w if dtype is None else w.astype(dtype, copy=False))


def load_state_dict(entries: Mapping[str, Entry], state_dict: Mapping[str, np.ndarray],
                    b: BlockConfig, *, where: str = "state dict", dtype=None) -> dict:
  """Strictly convert a whole torch state dict (numpy values) to a nested Flax ``params`` dict."""
  check_keys(entries, {k: np.shape(v) for k, v in state_dict.items()}, where)
  return tensors_to_flax(entries, state_dict.items(), b, dtype=dtype)
