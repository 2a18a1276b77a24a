"""analyze.samples: which records are shown, and every character of a solution exactly once."""

import numpy as np
import pytest

from wmtp_jax.analyze import samples
from wmtp_jax.data import records, tokenizer as tokenizer_lib


def test_token_pieces_cover_every_character_once_in_order():
  text = "ab  c\u00e9d"
  # a gap (2–4), byte pieces sharing one character (5–6 twice), a zero-width token
  offsets = [(0, 1), (1, 2), (4, 5), (5, 6), (5, 6), (6, 6), (6, 7)]
  pieces, gaps = samples.token_pieces(text, offsets)
  assert pieces == ["a", "b", "c", "\u00e9", "", "", "d"]
  assert gaps == ["", "", "  ", "", "", "", ""]
  assert "".join(g + p for g, p in zip(gaps, pieces)) == text


def test_candidates_pairs_first_with_the_nearest_correct_solution_then_singles():
  outputs = {0: "return x + 1", 1: "y = x\nreturn y + 1", 2: "return x + 2", 3: "return 7",
             4: "return 8", 5: "return 9"}
  index_map = {
      "p/0": {"correct_indices": [1, 0], "incorrect_indices": [2]},
      "p/1": {"correct_indices": [3], "incorrect_indices": []},
      "p/2": {"correct_indices": [], "incorrect_indices": [4, 5]},
  }
  chosen = samples.candidates(index_map, seed=0, output=outputs.__getitem__)
  assert list(chosen) == [(0, 2), (3, None), (None, 4)]


def test_encode_keeps_the_eos_and_the_span_masks(small_dataset):
  tokenizer = tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")
  record = records.RecordStore(small_dataset / "valid.jsonl")[0]
  sample = samples.encode(record, tokenizer, 160, spans="auto", where="r0")
  assert sample.eos and sample.pieces[-1] == "" and sample.tail == ""
  assert "".join(g + p for g, p in zip(sample.gaps, sample.pieces)) == record["output"]
  assert sample.n_tokens == len(sample.example.tokens) - sample.start
  assert set(sample.spans) == {"critical", "mutated"}
  assert sample.spans["critical"].any() and len(sample.spans["critical"]) == sample.n_tokens
  no_eos = samples.encode(record, tokenizer, 160, spans="auto", where="r0", add_eos=False)
  assert not no_eos.eos and no_eos.pieces == sample.pieces[:-1] and no_eos.tail == ""
  short = samples.encode(record, tokenizer, sample.start + 3, spans="off", where="r0")
  assert not short.eos and short.n_tokens == 3 and not short.spans
  assert "".join(g + p for g, p in zip(short.gaps, short.pieces)) + short.tail == record["output"]


def test_spans_asked_for_where_there_are_none_is_an_error(small_dataset):
  tokenizer = tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")
  record = {"instruction": "i", "input": "", "output": "pass\n", "problem_id": "mbpp/1",
            "is_correct": True}
  with pytest.raises(ValueError, match="mbpp.jsonl:3: --spans require, but the record carries "
                                       "no ground-truth spans"):
    samples.encode(record, tokenizer, 160, spans="require", where="mbpp.jsonl:3")
  assert not samples.encode(record, tokenizer, 160, spans="auto", where="x").spans
  with pytest.raises(FileNotFoundError, match="has no split 'nope'"):
    samples.held_out(small_dataset, "nope", tokenizer, 2, 160)
  with pytest.raises(ValueError, match="--spans 'yes'"):
    samples.held_out(small_dataset, "valid", tokenizer, 2, 160, spans="yes")
  with pytest.raises(ValueError, match="--n 0: show at least one sample"):
    samples.held_out(small_dataset, "valid", tokenizer, 0, 160)
  with pytest.raises(ValueError, match="valid.jsonl: no record has a prompt that leaves room"):
    samples.held_out(small_dataset, "valid", tokenizer, 2, 20)


def test_held_out_pairs_are_one_problems_correct_and_incorrect(small_dataset):
  tokenizer = tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")
  pairs = samples.held_out(small_dataset, "valid", tokenizer, 3, 160)
  ids = [pos.record["problem_id"] for pos, _ in pairs]
  assert len(pairs) == 3 and ids == sorted(ids)
  for pos, neg in pairs:
    assert pos.record["problem_id"] == neg.record["problem_id"]
    assert pos.record["is_correct"] and not neg.record["is_correct"]
    assert neg.spans["mutated"].any() and not np.any(pos.spans["mutated"])
