"""Tests of wmtp_jax.data.template: Alpaca prompts, response-only labels, truncation, collation."""

import functools

import numpy as np
import pytest

from wmtp_jax import IGNORE_INDEX
from wmtp_jax.data import jsonl, records, template
from wmtp_jax.data.tokenizer import train_bpe_tokenizer

WITH_INPUT = {"instruction": "Add the two numbers.", "input": "a = 3\nb = 4",
              "output": "def f(a, b):\n    return a + b\n", "problem_id": "p0", "is_correct": True}
NO_INPUT = {"instruction": "Return the square of x.", "input": "",
            "output": "def f(x):\n    return x * x\n", "problem_id": "p1", "is_correct": False}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  texts = [template.format_prompt(r) + r["output"] for r in (WITH_INPUT, NO_INPUT)] * 20
  return train_bpe_tokenizer(texts, 320, tmp_path_factory.mktemp("tok"))


def _split(example):
  """(prompt tokens, labelled tokens) of an Example, checking that labels = tokens on the latter."""
  labelled = example.labels != IGNORE_INDEX
  n_prompt = int(np.argmax(labelled))
  assert not labelled[:n_prompt].any() and labelled[n_prompt:].all()
  np.testing.assert_array_equal(example.labels[n_prompt:], example.tokens[n_prompt:])
  return example.tokens[:n_prompt], example.tokens[n_prompt:]


def test_prompt_strings():
  assert template.format_prompt(WITH_INPUT) == (
      "Below is an instruction that describes a task, paired with an input that provides further"
      " context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
      "Add the two numbers.\n\n### Input:\na = 3\nb = 4\n\n### Response:\n")
  assert template.format_prompt(NO_INPUT) == (
      "Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\n\n### Instruction:\nReturn the square of x.\n\n### Response:\n")


@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT], ids=["with_input", "no_input"])
def test_labels_cover_exactly_the_response_and_eos(tokenizer, record):
  example = template.encode(record, tokenizer, 512)
  assert example.tokens.dtype == example.labels.dtype == np.int32
  assert example.is_correct == float(record["is_correct"])
  prompt, labelled = _split(example)
  assert prompt[0] == tokenizer.bos_token_id
  assert tokenizer.decode(prompt[1:]) == template.format_prompt(record)
  assert labelled[-1] == tokenizer.eos_token_id
  assert tokenizer.decode(labelled[:-1]) == record["output"]
  no_bos = template.encode(record, tokenizer, 512, add_bos=False)
  np.testing.assert_array_equal(no_bos.tokens, example.tokens[1:])


def test_example_length_matches_encode_and_indexes(tokenizer, tmp_path):
  for record in (WITH_INPUT, NO_INPUT):
    assert template.example_length(record, tokenizer) == len(
        template.encode(record, tokenizer, 10**6))
  path = tmp_path / "train.jsonl"
  jsonl.write_jsonl(path, [WITH_INPUT, NO_INPUT])
  meta = records.build_index(
      path, tokenizer, length_fn=functools.partial(template.example_length, tokenizer=tokenizer))
  assert meta["problem_index_map"]["p0"]["correct_token_lengths"] == [
      template.example_length(WITH_INPUT, tokenizer)]


def test_truncation_policies(tokenizer):
  full = template.example_length(WITH_INPUT, tokenizer)
  n_prompt = len(_split(template.encode(WITH_INPUT, tokenizer, full))[0])
  cut = template.encode(WITH_INPUT, tokenizer, full - 3)
  prompt, labelled = _split(cut)
  assert len(cut) == full - 3 and len(prompt) == n_prompt
  assert tokenizer.eos_token_id not in labelled  # the EOS is cut with the response
  assert WITH_INPUT["output"].startswith(tokenizer.decode(labelled))
  assert template.encode(WITH_INPUT, tokenizer, full - 3, truncation="drop") is None
  assert len(template.encode(WITH_INPUT, tokenizer, full, truncation="drop")) == full
  # The prompt plus one response token is the least that is kept, under both policies.
  assert len(_split(template.encode(WITH_INPUT, tokenizer, n_prompt + 1))[1]) == 1
  for policy in template.TRUNCATION_POLICIES:
    assert template.encode(WITH_INPUT, tokenizer, n_prompt, truncation=policy) is None
  with pytest.raises(ValueError, match="truncation must be one of"):
    template.encode(WITH_INPUT, tokenizer, full, truncation="left")


def test_collate(tokenizer):
  examples = [template.encode(r, tokenizer, 512) for r in (WITH_INPUT, NO_INPUT)]
  batch = template.collate(examples, pad_id=tokenizer.pad_token_id)
  lengths = [len(e) for e in examples]
  seq_len = max(lengths)
  assert batch["tokens"].shape == batch["labels"].shape == batch["attention_mask"].shape == (
      2, seq_len)
  assert {k: v.dtype for k, v in batch.items()} == {
      "tokens": np.int32, "labels": np.int32, "attention_mask": np.int32,
      "is_correct": np.float32, "lengths": np.int32}
  np.testing.assert_array_equal(batch["lengths"], lengths)
  np.testing.assert_array_equal(batch["is_correct"], [1.0, 0.0])
  for row, example in enumerate(examples):
    n = len(example)
    np.testing.assert_array_equal(batch["tokens"][row, :n], example.tokens)
    np.testing.assert_array_equal(batch["labels"][row, :n], example.labels)
    assert (batch["tokens"][row, n:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(batch["attention_mask"][row], np.arange(seq_len) < n)
  assert template.collate(examples, pad_id=3, pad_to=seq_len + 5)["tokens"].shape == (
      2, seq_len + 5)
  with pytest.raises(ValueError, match="does not fit"):
    template.collate(examples, pad_id=3, pad_to=seq_len - 1)


def test_bucketing_bounds_the_shapes(tokenizer):
  buckets = (128, 136, 144, 256)
  shapes = set()
  n_prompt = len(_split(template.encode(WITH_INPUT, tokenizer, 512))[0])
  for max_len in range(n_prompt + 1, template.example_length(WITH_INPUT, tokenizer) + 1):
    example = template.encode(WITH_INPUT, tokenizer, max_len)
    batch = template.collate([example], pad_id=3, bucket_lengths=buckets)
    seq_len = batch["tokens"].shape[1]
    assert seq_len == min(b for b in buckets if b >= len(example))
    shapes.add(seq_len)
  assert shapes <= set(buckets) and len(shapes) > 1
  with pytest.raises(ValueError, match="largest bucket"):
    template.collate([template.encode(WITH_INPUT, tokenizer, 512)], pad_id=3, bucket_lengths=(8,))
  with pytest.raises(ValueError, match="at most one"):
    template.padded_length(8, pad_to=8, bucket_lengths=(8,))


def test_collate_pairs_share_the_length(tokenizer):
  pos = [template.encode(WITH_INPUT, tokenizer, 512)] * 2
  neg = [template.encode(NO_INPUT, tokenizer, 512)] * 2
  batch = template.collate_pairs(pos, neg, pad_id=tokenizer.pad_token_id,
                                 bucket_lengths=(96, 160, 256))
  assert set(batch) == {f"{side}_{k}" for side in ("pos", "neg")
                        for k in ("tokens", "labels", "attention_mask", "is_correct", "lengths")}
  assert batch["pos_tokens"].shape == batch["neg_tokens"].shape == (2, 160)
  np.testing.assert_array_equal(batch["pos_is_correct"], [1.0, 1.0])
  np.testing.assert_array_equal(batch["neg_is_correct"], [0.0, 0.0])
  unbucketed = template.collate_pairs(pos, neg, pad_id=3)
  assert unbucketed["pos_tokens"].shape[1] == max(len(pos[0]), len(neg[0]))


def _with_spans(record, critical, mutated=()):
  return {**record, "critical": [list(s) for s in critical], "mutated": [list(s) for s in mutated]}


def _char_ranges(tokenizer, example):
  """``{position t: [start, end)}`` of each labelled response token's characters in the output,
  from decoding the tokens one by one (the reference; ASCII text)."""
  ranges, pos = {}, 0
  for t in np.flatnonzero(example.labels != IGNORE_INDEX):
    if example.tokens[t] == tokenizer.eos_token_id:
      continue
    text = tokenizer.decode([int(example.tokens[t])])
    ranges[int(t)], pos = (pos, pos + len(text)), pos + len(text)
  return ranges, pos


def _reference_mask(tokenizer, example, spans):
  """1 at target position t iff token x_t is a response token that overlaps a span."""
  ranges, _ = _char_ranges(tokenizer, example)
  mask = np.zeros(len(example), np.int32)
  for t, (start, end) in ranges.items():
    mask[t] = any(s < end and start < e for s, e in spans)
  return mask


def test_span_masks_line_up_with_the_targets(tokenizer):
  """Spans whose edges fall inside a BPE token (the token counts as in), next to a token edge,
  and across several tokens: each mask equals a reference built by decoding the targets."""
  record = WITH_INPUT
  plain = template.encode(record, tokenizer, 512)
  ranges, n_chars = _char_ranges(tokenizer, plain)
  assert n_chars == len(record["output"])
  merged = [(t, s, e) for t, (s, e) in ranges.items() if e - s >= 2]
  assert len(merged) >= 3  # the tokenizer merges: there are edges to fall inside
  cases = []
  for t, s, e in merged:
    cases += [([(s + 1, e)], [(e - 1, e + 1)]),  # starts inside t; straddles t's end
              ([(s, s + 1)], [(s + 1, e - 1)] if e - s > 2 else [(s + 1, e)])]  # ends inside t
  cases.append(([(0, 3), (5, 9), (20, len(record["output"]))], []))
  for critical, mutated in cases:
    example = template.encode(_with_spans(record, critical, mutated), tokenizer, 512)
    np.testing.assert_array_equal(example.tokens, plain.tokens)
    np.testing.assert_array_equal(example.labels, plain.labels)
    assert set(example.span_masks) == {"critical_mask", "mutated_mask"}
    for key, spans in (("critical_mask", critical), ("mutated_mask", mutated)):
      mask = example.span_masks[key]
      assert mask.dtype == np.int32 and mask.shape == example.tokens.shape
      np.testing.assert_array_equal(mask, _reference_mask(tokenizer, example, spans),
                                    err_msg=f"{key} {spans}")
      assert not mask[example.labels == IGNORE_INDEX].any()  # target positions only
      assert mask[-1] == 0  # the closing EOS has no characters
  t, s, e = merged[0]
  inside = template.encode(_with_spans(record, [(s + 1, s + 2)]), tokenizer, 512)
  assert inside.span_masks["critical_mask"].tolist() == [int(u == t) for u in range(len(plain))]
  assert template.encode(_with_spans(record, [], []), tokenizer, 512).span_masks[
      "critical_mask"].sum() == 0


def test_span_masks_are_truncated_with_the_response(tokenizer):
  record = _with_spans(WITH_INPUT, [(0, len(WITH_INPUT["output"]))], [(4, 5)])
  full = template.encode(record, tokenizer, 512)
  cut = template.encode(record, tokenizer, len(full) - 3)
  for key, mask in cut.span_masks.items():
    np.testing.assert_array_equal(mask, full.span_masks[key][:len(cut)])
  assert cut.span_masks["critical_mask"].sum() == full.span_masks["critical_mask"].sum() - 2
  assert template.encode(WITH_INPUT, tokenizer, 512).span_masks == {}  # no spans, no masks


def test_collate_carries_the_span_masks(tokenizer):
  records = [_with_spans(WITH_INPUT, [(4, 9)], [(23, 24)]), _with_spans(NO_INPUT, [(18, 22)])]
  examples = [template.encode(r, tokenizer, 512) for r in records]
  batch = template.collate(examples, pad_id=tokenizer.pad_token_id, pad_to=200)
  for key in ("critical_mask", "mutated_mask"):
    assert batch[key].shape == (2, 200) and batch[key].dtype == np.int32
    for row, example in enumerate(examples):
      np.testing.assert_array_equal(batch[key][row, :len(example)], example.span_masks[key])
      assert not batch[key][row, len(example):].any()
      assert not batch[key][row][batch["labels"][row] == IGNORE_INDEX].any()
  assert batch["mutated_mask"][1].sum() == 0 and batch["critical_mask"][1].sum() > 0
  pairs = template.collate_pairs(examples[:1], examples[1:], pad_id=tokenizer.pad_token_id)
  for side, example in (("pos", examples[0]), ("neg", examples[1])):
    np.testing.assert_array_equal(pairs[f"{side}_critical_mask"][0, :len(example)],
                                  example.span_masks["critical_mask"])
  with pytest.raises(ValueError, match="critical_mask: 1 of the 2 examples of a batch carry it"):
    template.collate([examples[0], template.encode(NO_INPUT, tokenizer, 512)], pad_id=3)


def test_span_masks_need_a_fast_tokenizer(tokenizer):
  class SlowTokenizer:  # the encode() interface without character offsets
    bos_token_id, eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    encode = staticmethod(tokenizer.encode)

  assert len(template.encode(WITH_INPUT, SlowTokenizer(), 512)) == len(
      template.encode(WITH_INPUT, tokenizer, 512))
  with pytest.raises(ValueError, match="record 'p0' carries spans .* need a fast tokenizer"):
    template.encode(_with_spans(WITH_INPUT, [(0, 3)]), SlowTokenizer(), 512)


@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT], ids=["with_input", "no_input"])
def test_without_eos_the_row_ends_with_the_response(tokenizer, record):
  """``add_eos=False`` (``data.train_eos``, the reference's recipe): the same row less the EOS,
  labels on exactly the response; lengths, span masks and truncation follow."""
  with_eos = template.encode(record, tokenizer, 512)
  example = template.encode(record, tokenizer, 512, add_eos=False)
  np.testing.assert_array_equal(example.tokens, with_eos.tokens[:-1])
  np.testing.assert_array_equal(example.labels, with_eos.labels[:-1])
  _, labelled = _split(example)
  assert tokenizer.eos_token_id not in example.tokens.tolist()
  assert tokenizer.decode(labelled) == record["output"]
  assert template.example_length(record, tokenizer, add_eos=False) == len(example)
  spans = _with_spans(record, [(0, 3)], [(4, 5)])
  for key, mask in template.encode(spans, tokenizer, 512, add_eos=False).span_masks.items():
    np.testing.assert_array_equal(
        mask, template.encode(spans, tokenizer, 512).span_masks[key][:-1])
  cut = template.encode(record, tokenizer, len(example) - 2, add_eos=False)
  np.testing.assert_array_equal(cut.tokens, example.tokens[:-2])
