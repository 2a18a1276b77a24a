"""Held-out samples for the token page: pairs of a problem's correct and incorrect solutions,
encoded as the training template encodes them, with the characters of every response token.

A ``Sample``'s response tokens are the targets of its row: the tokens after the prompt, the closing
EOS included where the run trains one (``data.train_eos``) and truncation did not cut it. Token
``i`` covers ``pieces[i]``, the characters of ``record["output"]`` the tokenizer's offsets give
it; ``gaps[i]`` holds the characters before it that no token covers, so
``"".join(g + p for g, p in zip(gaps, pieces)) + tail`` is the output (``tail``: what truncation
cut). A token whose offsets repeat characters already shown (byte pieces of one character) or
that has none (the EOS) gets an empty piece.
"""

import dataclasses
import difflib
import logging
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.data import records, template
from wmtp_jax.data.schema import SPAN_FIELDS

log = logging.getLogger("wmtp_jax")
SPAN_MODES = ("auto", "require", "off")


@dataclasses.dataclass(frozen=True)
class Sample:
  """One held-out solution. ``start``: the row position of its first response token; ``eos``:
  its last response token is the closing EOS; ``spans``: ``{field: [N] bool}`` per response
  token (``critical``, ``mutated``), empty when not marked."""
  record: Mapping
  example: template.Example
  start: int
  pieces: tuple[str, ...]
  gaps: tuple[str, ...]
  tail: str
  eos: bool
  spans: Mapping[str, np.ndarray]

  @property
  def n_tokens(self) -> int:
    return len(self.pieces)

  def is_eos(self, i: int) -> bool:
    """Whether response token ``i`` is the closing EOS."""
    return self.eos and i == len(self.pieces) - 1


Pair = tuple[Sample | None, Sample | None]   # (correct, incorrect); one of them may be missing


def candidates(problem_index_map: Mapping[str, Mapping], *, seed: int,
               output=lambda i: "") -> Iterator[tuple[int | None, int | None]]:
  """(correct, incorrect) record indices, problem by problem: those with both first, in an order
  drawn with ``seed`` (the incorrect one at random, the correct one nearest to it by ``difflib``
  ratio of ``output(index)``), then single solutions of the other problems (None on the missing
  side) by problem id."""
  rng = np.random.default_rng(seed)
  entries = sorted(problem_index_map.items())
  both = [e for e in entries if e[1]["correct_indices"] and e[1]["incorrect_indices"]]
  for i in rng.permutation(len(both)):
    entry = both[i][1]
    neg = int(rng.choice(entry["incorrect_indices"]))
    pos = max(entry["correct_indices"], key=lambda c: difflib.SequenceMatcher(
        None, output(c), output(neg), autojunk=False).ratio())
    yield int(pos), neg
  for _, entry in entries:
    correct, incorrect = entry["correct_indices"], entry["incorrect_indices"]
    if not (correct and incorrect):
      yield (correct[0], None) if correct else (None, incorrect[0])


def token_pieces(text: str, offsets: Sequence[Sequence[int]]) -> tuple[list[str], list[str]]:
  """``(pieces, gaps)`` of tokens with character ``offsets`` (``[start, end)``) into ``text``
  (module docstring): every character once, in order."""
  pieces, gaps, shown = [], [], 0
  for start, end in offsets:
    start = max(start, shown)
    end = max(end, start)
    gaps.append(text[shown:start] if start > shown else "")
    pieces.append(text[start:end])
    shown = max(shown, end)
  return pieces, gaps


def encode(record: Mapping, tokenizer, max_len: int, *, spans: str, where: str,
           add_eos: bool = True) -> Sample | None:
  """The ``Sample`` of ``record``, or None when its prompt leaves no room for a response in
  ``max_len`` tokens (``spans``: one of ``SPAN_MODES``; ``where`` names the record in errors;
  ``add_eos``: as ``template.encode``)."""
  carried = [f for f in SPAN_FIELDS if f in record]
  if spans == "require" and not carried:
    raise ValueError(f"{where}: --spans require, but the record carries no ground-truth spans "
                     f"({', '.join(SPAN_FIELDS)}; only synthetic data has them)")
  if spans == "off":
    record = {k: v for k, v in record.items() if k not in SPAN_FIELDS}
  example = template.encode(record, tokenizer, max_len, truncation="response", add_eos=add_eos)
  if example is None:
    return None
  if not getattr(tokenizer, "is_fast", False):
    raise ValueError(f"{where}: the token page needs character offsets, i.e. a fast tokenizer; "
                     f"got {type(tokenizer).__name__}")
  output = record["output"]
  encoded = tokenizer(output, add_special_tokens=False, return_offsets_mapping=True)
  start = int(np.argmax(example.labels != IGNORE_INDEX))
  n = len(example.tokens) - start
  offsets = [tuple(o) for o in encoded["offset_mapping"]][:n]
  pieces, gaps = token_pieces(output, offsets)
  shown = max((o[1] for o in offsets), default=0)
  tail = output[shown:]
  eos = n > len(offsets)
  if eos:
    pieces.append("")
    gaps.append(tail)
    tail = ""
  masks = {field: np.asarray(example.span_masks[key][start:], bool)
           for field, key in template.SPAN_MASKS.items() if key in example.span_masks}
  return Sample(record=record, example=example, start=start, pieces=tuple(pieces),
                gaps=tuple(gaps), tail=tail, eos=eos, spans=masks)


def held_out(dataset: pathlib.Path, split: str, tokenizer, n: int, max_len: int, *,
             seed: int = 0, spans: str = "auto", add_eos: bool = True) -> list[Pair]:
  """The first ``n`` problems of ``candidates`` in ``dataset``'s split ``split``, encoded and
  sorted by problem id; a problem with a prompt too long for ``max_len`` is left out."""
  if n < 1:
    raise ValueError(f"--n {n}: show at least one sample")
  if spans not in SPAN_MODES:
    raise ValueError(f"--spans {spans!r}: expected one of {SPAN_MODES}")
  path = dataset / f"{split}.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: the dataset has no split {split!r}")
  store = records.RecordStore(path)
  pairs, skipped = [], 0
  for indices in candidates(store.meta["problem_index_map"], seed=seed,
                            output=lambda i: store[i]["output"]):
    pair = tuple(None if i is None else encode(store[i], tokenizer, max_len, spans=spans,
                                               where=f"{path}: record {i}", add_eos=add_eos)
                 for i in indices)
    if any(s is None and i is not None for s, i in zip(pair, indices)):
      skipped += 1
      continue
    pairs.append(pair)
    if len(pairs) == n:
      break
  if skipped:
    log.warning("%s: %d problem(s) left out, their prompt leaves no room for a response in "
                "%d tokens", path, skipped, max_len)
  if not pairs:
    raise ValueError(f"{path}: no record has a prompt that leaves room for a response in "
                     f"{max_len} tokens")
  marked = {bool(s.spans) for pair in pairs for s in pair if s is not None}
  if len(marked) > 1:
    raise ValueError(f"{path}: some records carry ground-truth spans and others do not")
  return sorted(pairs, key=lambda pair: (pair[0] or pair[1]).record["problem_id"])
