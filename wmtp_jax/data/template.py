"""Alpaca prompt template, tokenisation with response-only labels, and batch collation.

A training row (DESIGN §2) is ``[<s>] prompt-tokens response-tokens </s>``, right padded:

  ``tokens[t]``          token ids ``x_t``
  ``labels[t]``          ``x_t`` on response tokens and the closing EOS, ``IGNORE_INDEX`` (-100) on
                         BOS, the prompt (instruction, input and the ``### Response:\\n`` header)
                         and padding
  ``attention_mask[t]``  1 on real tokens, 0 on padding

EOS (``add_eos``, ``config.data.train_eos``). By default the response ends with a trained EOS: the
model learns where a program ends, generation stops there, and the critic's terminal value sits
on it. ``add_eos=False`` is the reference's recipe: no EOS is appended (pad = EOS, and padding
labels are ignored), so none is ever learned; the row ends with the response's last token, and
evaluation ends programs by the template's stop rules (``wmtp_jax.eval.prompts``).

Plain records (``"format": "plain"``, ``wmtp_jax.data.schema``: pre-training documents) have no
prompt: the row is ``[<s>] output </s>``, labels on every token but BOS.

The prompt and the response are tokenised separately and concatenated, so the prompt/response
boundary is exact whatever the tokenizer merges across it. ``tokenizer`` is any object with the
``transformers`` tokenizer interface: ``encode(text, add_special_tokens=False) -> list[int]``,
``bos_token_id`` and ``eos_token_id`` (e.g. ``wmtp_jax.data.tokenizer.load_tokenizer(path)``).

Span masks. A record that carries ground-truth spans of its ``output`` (``critical``,
``mutated``: ``wmtp_jax.data.schema.SPAN_FIELDS``, synthetic data) also gets, per field, a mask
aligned with ``labels`` (``SPAN_MASKS``: ``critical_mask``, ``mutated_mask``):

  ``critical_mask[t]``   1 if ``x_t`` is a response token whose characters overlap a span of
                         ``critical``, else 0 (0 on BOS, the prompt, the closing EOS, padding);
                         ``mutated_mask[t]`` likewise for ``mutated``

A token that overlaps a span at all counts as in it, so where a BPE merge crosses a span edge
(``" +"``, ``"(x"``) the whole token is in; a token without characters (a zero-width offset) is
never in. The overlap is read from the tokenizer's character offsets of the response
(``return_offsets_mapping=True``), which needs a fast (Rust) tokenizer. Records without spans
get no mask, and a batch mixing records with and without a field is an error.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.data.schema import SPAN_FIELDS

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")

TRUNCATION_POLICIES = ("response", "drop")
SPAN_MASKS = {field: f"{field}_mask" for field in SPAN_FIELDS}  # record field → batch key


@dataclasses.dataclass(frozen=True)
class Example:
  """One encoded record (unpadded).

  Attributes:
    tokens: ``[L]`` int32 token ids (BOS, prompt, response, EOS when added and not truncated away).
    labels: ``[L]`` int32, ``tokens`` on the response (+EOS), ``IGNORE_INDEX`` elsewhere.
    is_correct: the record's reward R (1.0 correct, 0.0 incorrect).
    span_masks: ``{batch key: [L] int32}``, one mask per span field the record carries (module
      docstring), aligned with ``labels``.
  """
  tokens: np.ndarray
  labels: np.ndarray
  is_correct: float
  span_masks: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.tokens)


def format_prompt(record: Mapping[str, Any]) -> str:
  """Returns the Alpaca prompt of ``record``, ending with ``### Response:\\n``.

  The ``### Input:`` variant is used when ``record["input"]`` is a non-empty string; a ``plain``
  record (module docstring) has the empty prompt.
  """
  if record.get("format") == "plain":
    return ""
  if record.get("input"):
    return PROMPT_WITH_INPUT.format(instruction=record["instruction"], input=record["input"])
  return PROMPT_NO_INPUT.format(instruction=record["instruction"])


def _prompt_and_response_ids(record: Mapping[str, Any], tokenizer, add_bos: bool,
                             add_eos: bool) -> tuple[list[int], list[int]]:
  """Untruncated token ids: ``([BOS] + prompt, response + [EOS])`` (BOS / EOS as asked)."""
  prompt = tokenizer.encode(format_prompt(record), add_special_tokens=False)
  if add_bos:
    prompt = [tokenizer.bos_token_id] + prompt
  response = tokenizer.encode(record["output"], add_special_tokens=False)
  return prompt, response + ([tokenizer.eos_token_id] if add_eos else [])


def _overlaps(offsets_Sx2: np.ndarray, spans: Sequence[Sequence[int]]) -> np.ndarray:
  """``[S]`` int32 over response tokens whose characters are ``offsets_Sx2`` (``[start, end)``
  each): 1 where the token overlaps one of ``spans``."""
  starts_S, ends_S = offsets_Sx2[:, 0], offsets_Sx2[:, 1]
  hit_S = np.zeros(len(offsets_Sx2), dtype=bool)
  for start, end in spans:
    hit_S |= (starts_S < end) & (start < ends_S)
  return hit_S.astype(np.int32)


def _response_span_masks(record: Mapping[str, Any], tokenizer, response: Sequence[int],
                         add_eos: bool) -> dict[str, np.ndarray]:
  """``{batch key: [len(response)] int32}`` for the span fields of ``record`` (module docstring);
  ``response`` is the untruncated response (+ EOS when ``add_eos``) of
  ``_prompt_and_response_ids``."""
  fields = [field for field in SPAN_FIELDS if field in record]
  if not fields:
    return {}
  if not getattr(tokenizer, "is_fast", False):
    raise ValueError(f"record {record['problem_id']!r} carries spans ({', '.join(fields)}); "
                     f"their token masks need a fast tokenizer (character offsets), got "
                     f"{type(tokenizer).__name__}")
  encoded = tokenizer(record["output"], add_special_tokens=False, return_offsets_mapping=True)
  eos = [tokenizer.eos_token_id] if add_eos else []
  if list(encoded["input_ids"]) + eos != list(response):
    raise ValueError(f"record {record['problem_id']!r}: the tokenizer's ids with offsets differ "
                     f"from encode()")
  offsets_Sx2 = np.asarray(encoded["offset_mapping"], dtype=np.int64).reshape(-1, 2)
  return {SPAN_MASKS[field]: np.append(_overlaps(offsets_Sx2, record[field]),
                                       np.zeros(len(eos), np.int32))
          for field in fields}


def example_length(record: Mapping[str, Any], tokenizer, *, add_bos: bool = True,
                   add_eos: bool = True) -> int:
  """Untruncated row length of ``record`` (what ``encode`` produces with unlimited ``max_len``).

  Usable as ``length_fn`` of ``wmtp_jax.data.records.build_index`` (whose indexes count the EOS).
  """
  prompt, response = _prompt_and_response_ids(record, tokenizer, add_bos, add_eos)
  return len(prompt) + len(response)


def encode(record: Mapping[str, Any], tokenizer, max_len: int, *,
           truncation: Literal["response", "drop"] = "response", add_bos: bool = True,
           add_eos: bool = True) -> Example | None:
  """Tokenises ``record`` into an ``Example`` of at most ``max_len`` tokens, or None (dropped).

  ``add_eos``: end the response with a trained EOS (module docstring). A record whose prompt
  leaves no room for one response token is always dropped. A longer record is dropped under
  ``truncation="drop"``; under ``"response"`` its response is cut to fit, and the EOS is then
  cut with it (a truncated solution must not learn to stop there).
  """
  if truncation not in TRUNCATION_POLICIES:
    raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
  prompt, response = _prompt_and_response_ids(record, tokenizer, add_bos, add_eos)
  room = max_len - len(prompt)
  if room < 1 or (len(response) > room and truncation == "drop"):
    return None
  masks = {key: np.concatenate([np.zeros(len(prompt), np.int32), mask[:room]])
           for key, mask in _response_span_masks(record, tokenizer, response, add_eos).items()}
  response = response[:room]
  tokens = np.asarray(prompt + response, dtype=np.int32)
  labels = tokens.copy()
  labels[:len(prompt)] = IGNORE_INDEX
  return Example(tokens=tokens, labels=labels, is_correct=float(record["is_correct"]),
                 span_masks=masks)


def padded_length(longest: int, *, pad_to: int | None = None,
                  bucket_lengths: Sequence[int] | None = None) -> int:
  """Sequence length S of a batch whose longest row has ``longest`` tokens.

  ``pad_to`` fixes S; ``bucket_lengths`` rounds up to the smallest bucket ≥ ``longest`` (so the
  number of distinct batch shapes, and thus of recompilations, is bounded); neither pads to the
  longest row.
  """
  if pad_to is not None and bucket_lengths is not None:
    raise ValueError("give at most one of pad_to and bucket_lengths")
  if pad_to is not None:
    if longest > pad_to:
      raise ValueError(f"a row of {longest} tokens does not fit pad_to={pad_to}")
    return pad_to
  if bucket_lengths is not None:
    fitting = [b for b in bucket_lengths if b >= longest]
    if not fitting:
      raise ValueError(f"a row of {longest} tokens exceeds the largest bucket "
                       f"{max(bucket_lengths)}; set max_len ≤ the largest bucket")
    return min(fitting)
  return longest


def collate(examples: Sequence[Example], *, pad_id: int, pad_to: int | None = None,
            bucket_lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Right-pads ``examples`` into a batch (S from ``padded_length``).

  Returns:
    ``tokens [B, S] int32`` (``pad_id`` on padding), ``labels [B, S] int32`` (-100 on padding),
    ``attention_mask [B, S] int32``, ``is_correct [B] float32`` (reward R),
    ``lengths [B] int32`` (real tokens per row), and the span masks the examples carry
    (``critical_mask``, ``mutated_mask``: ``[B, S] int32``, 0 on padding; module docstring).

  Raises:
    ValueError: some examples carry a span mask and others do not.
  """
  lengths = np.asarray([len(e) for e in examples], dtype=np.int32)
  seq_len = padded_length(int(lengths.max()), pad_to=pad_to, bucket_lengths=bucket_lengths)
  batch = len(examples)
  tokens = np.full((batch, seq_len), pad_id, dtype=np.int32)
  labels = np.full((batch, seq_len), IGNORE_INDEX, dtype=np.int32)
  for row, example in enumerate(examples):
    tokens[row, :len(example)] = example.tokens
    labels[row, :len(example)] = example.labels
  batch_arrays = {
      "tokens": tokens,
      "labels": labels,
      "attention_mask": (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32),
      "is_correct": np.asarray([e.is_correct for e in examples], dtype=np.float32),
      "lengths": lengths,
  }
  for key in SPAN_MASKS.values():
    carried = [key in e.span_masks for e in examples]
    if any(carried) and not all(carried):
      raise ValueError(f"{key}: {sum(carried)} of the {batch} examples of a batch carry it; a "
                       f"batch must not mix records with and without these spans")
    if all(carried):
      mask = np.zeros((batch, seq_len), dtype=np.int32)
      for row, example in enumerate(examples):
        mask[row, :len(example)] = example.span_masks[key]
      batch_arrays[key] = mask
  return batch_arrays


def collate_pairs(pos: Sequence[Example], neg: Sequence[Example], *, pad_id: int,
                  pad_to: int | None = None,
                  bucket_lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Collates aligned (correct, incorrect) rows, both padded to the same S.

  Returns the keys of ``collate`` prefixed with ``pos_`` and ``neg_`` (``pos_tokens [B, S]``, …).
  """
  if len(pos) != len(neg):
    raise ValueError(f"{len(pos)} positive vs {len(neg)} negative examples")
  longest = max(len(e) for e in (*pos, *neg))
  seq_len = padded_length(longest, pad_to=pad_to, bucket_lengths=bucket_lengths)
  return {f"{prefix}_{key}": value
          for prefix, side in (("pos", pos), ("neg", neg))
          for key, value in collate(side, pad_id=pad_id, pad_to=seq_len).items()}


def pad_id(tokenizer) -> int:
  """The id that pads rows: the tokenizer's ``pad_token_id``, or, for a tokenizer without a pad
  token (LLaMA-3's), its ``eos_token_id`` (pad = eos, as the reference does). Padding is masked
  out (``attention_mask`` 0, labels ``IGNORE_INDEX``), so the id only has to be a valid token."""
  pad = getattr(tokenizer, "pad_token_id", None)
  if pad is None:
    pad = getattr(tokenizer, "eos_token_id", None)
  if pad is None:
    raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer)!r} "
                     f"has neither a pad nor an eos token: rows cannot be padded")
  return int(pad)
