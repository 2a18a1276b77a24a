"""Tests of the ground-truth spans of wmtp_jax.data.synthetic (render, problems, dataset modules).

``critical`` is checked against the specification: a table of each primitive's literals and
operators written here, and the Python tokens outside the spans. ``mutated`` is checked against a
character diff (difflib) with the nearest correct rendering. Both on a sweep of specifications,
their mutations and every surface style, and on generated records.
"""

import collections
import difflib
import io
import keyword
import random
import re
import tokenize

from conftest import SMALL_DATA
from wmtp_jax.data import records, synthetic
from wmtp_jax.data.synthetic import grammar, render

# The critical text of each primitive ({k}: its constant, {k0} {k1}: the letters of replace).
CRITICAL = {
    "add": ["+", "{k}"], "sub": ["-", "{k}"], "mul": ["*", "{k}"], "fdiv": ["//", "{k}"],
    "mod": ["%", "{k}"], "square": ["**", "2"], "neg": ["-"], "abs": ["abs", "(", ")"],
    "ident": [], "plus": ["+"], "minus": ["-"], "times": ["*"], "larger": ["max", "(", ")"],
    "smaller": ["min", "(", ")"],
    "even": ["%", "2", "==", "0"], "odd": ["%", "2", "==", "1"], "positive": [">", "0"],
    "negative": ["<", "0"], "gt": [">", "{k}"], "lt": ["<", "{k}"], "ge": [">=", "{k}"],
    "le": ["<=", "{k}"], "divisible": ["%", "{k}", "==", "0"],
    "keep_even": ["[", "%", "2", "==", "0", "]"], "keep_odd": ["[", "%", "2", "==", "1", "]"],
    "keep_gt": ["[", ">", "{k}", "]"], "keep_lt": ["[", "<", "{k}", "]"],
    "drop_eq": ["[", "!=", "{k}", "]"], "map_mul": ["[", "*", "{k}", "]"],
    "map_add": ["[", "+", "{k}", "]"], "map_square": ["[", "**", "2", "]"],
    "sum": ["sum", "(", ")"], "count": ["len", "(", ")"], "largest": ["max", "(", ")"],
    "smallest": ["min", "(", ")"], "reversed": ["[::-1]"], "sorted": ["sorted", "(", ")"],
    "them": [],
    "upper": ["upper"], "lower": ["lower"], "reverse": ["[::-1]"], "repeat": ["*", "{k}"],
    "append": ["+", "{k}"], "prepend": ["{k}", "+"], "head": ["[:{k}]"], "tail": ["[{k}:]"],
    "replace": ["replace", "{k0}", "{k1}"], "length": ["len", "(", ")"],
}
# What the surface styles write outside critical spans.
STYLE_NAMES = {"def", "f", "x", "a", "b", "xs", "s", "v", "result", "return", "if", "else", "for",
               "in"}
STYLE_PUNCTUATION = {"(", ")", ":", ",", ".", "="}
FUNCTIONS = {"abs", "max", "min", "sum", "len", "sorted"}  # their parentheses are critical
METHODS = {"upper", "lower", "replace"}


def _op_critical(spec: grammar.Spec, i: int) -> list[str]:
  """The critical texts of primitive ``i`` of ``spec`` (a branch that keeps x unchanged: its x)."""
  op = spec.ops[i]
  if spec.family == "cond" and i > 0 and op.kind == "ident":
    return ["x"]
  k = "" if op.k is None else str(op.k)
  return [t.format(k=k, k0=k[:1], k1=k[1:]) for t in CRITICAL[op.kind]]


def _expected_critical(spec: grammar.Spec) -> list[str]:
  return [text for i in range(len(spec.ops)) for text in _op_critical(spec, i)]


def _tokens(code: str) -> list[tuple[int, int, int]]:
  """``(type, start, end)`` of the Python tokens of ``code`` (character offsets)."""
  line_starts = [0]
  for line in code.splitlines(keepends=True):
    line_starts.append(line_starts[-1] + len(line))
  offset = lambda pos: line_starts[pos[0] - 1] + pos[1]
  return [(t.type, offset(t.start), offset(t.end))
          for t in tokenize.generate_tokens(io.StringIO(code).readline)
          if t.type in (tokenize.NAME, tokenize.NUMBER, tokenize.STRING, tokenize.OP)]


_SLICE = re.compile(r"\[(-?\d+)?:(-?\d+)?(:-?\d+)?\]")


def _lexemes(code: str) -> list[tuple[int, int]]:
  """The ``[start, end)`` of the Python tokens of ``code``, a slice (``[::-1]``, ``[:3]``) as one
  (it is one operator of the specification)."""
  slices = [m.span() for m in _SLICE.finditer(code)]
  out = []
  for _, start, end in _tokens(code):
    start, end = next(((s, e) for s, e in slices if s <= start < e), (start, end))
    if not out or out[-1] != (start, end):
      out.append((start, end))
  return out


def _inside(spans, start: int, end: int) -> list[bool]:
  return [any(s <= c < e for s, e in spans) for c in range(start, end)]


def _parentheses(code: str) -> dict[int, str]:
  """Offset of every parenthesis of ``code`` → ``"group"`` (an operand's), ``"function"`` (a
  call of FUNCTIONS) or ``"style"`` (the signature, a method call)."""
  out, stack, previous = {}, [], ""
  for kind, start, end in _tokens(code):
    text = code[start:end]
    if text == "(":
      stack.append(start)
      if previous in FUNCTIONS:
        out[start] = "function"
      elif previous.isidentifier() and not keyword.iskeyword(previous):
        out[start] = "style"
      else:
        out[start] = "group"
    elif text == ")":
      out[start] = out[stack.pop()]
    previous = text
  return out


def _check_critical(code: str, spans, spec: grammar.Spec | None = None) -> None:
  """Literals, operators, functions, brackets and the parentheses of a function or an operand
  inside ``spans``, only the surface style outside; with ``spec``, the spans hold exactly its
  critical texts and the operands' parentheses."""
  assert list(spans) == sorted(spans), spans
  assert all(0 <= s < e <= len(code) for s, e in spans), spans
  assert not any(c.isspace() for s, e in spans for c in code[s:e]), (code, spans)
  parentheses = _parentheses(code)
  for kind, start, end in _tokens(code):
    text, inside = code[start:end], _inside(spans, start, end)
    if start in parentheses:
      assert inside == [parentheses[start] != "style"], (code, start)
    elif (kind == tokenize.NUMBER or kind == tokenize.NAME and text in FUNCTIONS | METHODS
          or text in "[]"):
      assert all(inside), (code, text)
    elif kind == tokenize.STRING:  # the constant inside, its quotes outside
      assert all(inside[1:-1]) and not inside[0] and not inside[-1], (code, text)
    elif kind == tokenize.NAME and not all(inside):
      assert not any(inside) and text in STYLE_NAMES, (code, text)
    elif kind == tokenize.OP and not all(inside):
      assert not any(inside) and text in STYLE_PUNCTUATION, (code, text)
  if spec is not None:
    expected = _expected_critical(spec)
    span_texts = [code[s:e] for s, e in spans]
    chars = collections.Counter("".join(span_texts))
    n_groups = list(parentheses.values()).count("group") // 2
    chars.subtract({"(": n_groups, ")": n_groups})
    assert +chars == collections.Counter("".join(expected)), (code, span_texts, expected)
    for text in expected:
      assert any(text in span for span in span_texts), (code, text, span_texts)


def _sweep(n: int, seed: int = 0):
  """``(spec, mutations)`` of ``n`` sampled specifications."""
  rng = random.Random(seed)
  for _ in range(n):
    spec = grammar.sample_spec(rng)
    yield spec, grammar.mutations(spec, rng)


def test_critical_spans_are_the_specifications_literals_and_operators():
  n = 0
  for spec, mutations in _sweep(400):
    for s in [spec] + mutations:
      for style in render.styles(s):
        rendering = render.render(s, style)
        _check_critical(rendering.text, rendering.critical, s)
        n += 1
  assert n > 8000


def test_swapped_steps_and_branches_change_the_critical_text():
  n = 0
  for spec, mutations in _sweep(400):
    for mutation in mutations:
      moved = [i for i, (a, b) in enumerate(zip(spec.ops, mutation.ops)) if a != b]
      swap = len(mutation.ops) == len(spec.ops) and sorted(mutation.ops) == sorted(spec.ops)
      if not swap or not all(_op_critical(spec, i) for i in moved):
        continue  # not a swap, or a step without text of its own moved
      for style in render.styles(spec):
        texts = [[r.text[s:e] for s, e in r.critical]
                 for r in (render.render(spec, style), render.render(mutation, style))]
        assert texts[0] != texts[1], (spec.key, mutation.key, style)
        n += 1
  assert n > 500


def _differences(correct: str, mutant: str) -> list[tuple[int, int]]:
  """The ``[lo, hi]`` character ranges of ``mutant`` where a difflib diff with ``correct`` sees a
  difference. An insertion or deletion is taken at every position it can slide to over equal
  text (where to put it is arbitrary), and each range is widened to the Python tokens it touches
  (a character diff matches single characters by coincidence, e.g. ``[:1]`` against ``[::-1]``).
  """
  tokens = _lexemes(mutant)
  out = []
  opcodes = difflib.SequenceMatcher(None, correct, mutant, autojunk=False).get_opcodes()
  for tag, i1, i2, j1, j2 in opcodes:
    if tag == "equal":
      continue
    lo, hi = j1, j2
    if tag == "delete":  # slides while the text beside it equals its (rotated) text
      block = correct[i1:i2]
      while lo > 0 and mutant[lo - 1] == block[(lo - 1 - j1) % len(block)]:
        lo -= 1
      while hi < len(mutant) and mutant[hi] == block[(hi - j1) % len(block)]:
        hi += 1
    elif tag == "insert":  # slides while the text beside it repeats it
      while lo > 0 and mutant[lo - 1] == mutant[lo - 1 + j2 - j1]:
        lo -= 1
      while hi < len(mutant) and mutant[hi] == mutant[hi - (j2 - j1)]:
        hi += 1
    touched = [(s, e) for s, e in tokens if s < hi and lo < e or lo == hi and s <= lo <= e]
    out.append((min([lo] + [s for s, _ in touched]), max([hi] + [e for _, e in touched])))
  return out


def _near(text: str, start: int, end: int, lo: int, hi: int) -> bool:
  """``[start, end)`` overlaps or touches ``[lo, hi]``, whitespace apart at most."""
  if start <= hi and lo <= end:
    return True
  return (text[end:lo] if end <= lo else text[hi:start]).isspace()


def _check_mutated(mutant: str, spans, correct: str, reordered: bool) -> None:
  """``spans`` lie where ``mutant`` differs from ``correct`` (difflib) and hold every difference.

  A reordering (swapped steps or branches) is a move, which a diff reads either way round: there
  the spans must lie within the range of the differences.
  """
  assert spans and list(spans) == sorted(spans), spans
  assert all(0 <= s < e <= len(mutant) for s, e in spans), spans
  assert all(e < s2 for (_, e), (s2, _) in zip(spans, spans[1:])), spans  # disjoint, merged
  differences = _differences(correct, mutant)
  if reordered:
    differences = [(min(lo for lo, _ in differences), max(hi for _, hi in differences))]
  for s, e in spans:  # each lexeme in a span is at a difference
    for start, end in _lexemes(mutant):
      if s < end and start < e:
        assert any(_near(mutant, start, end, lo, hi) for lo, hi in differences), (
            correct, mutant, mutant[start:end])
  # Outside the spans the mutant is the correct rendering, with other text in their place.
  outside = [mutant[e:s] for (_, e), (s, _) in zip([(0, 0)] + list(spans),
                                                    list(spans) + [(len(mutant), 0)])]
  assert re.fullmatch("(.*?)".join(map(re.escape, outside)), correct, re.S), (correct, mutant)


def _reordered(mutant: str, mutant_critical, correct: str, correct_critical) -> bool:
  """Whether the critical texts of the two are the same, parentheses apart (moved steps)."""
  texts = lambda code, spans: sorted(re.sub(r"[()]", "", "".join(code[s:e] for s, e in spans)))
  return texts(mutant, mutant_critical) == texts(correct, correct_critical)


def test_mutated_spans_lie_where_the_text_differs():
  n = 0
  for spec, mutations in _sweep(600, seed=1):
    correct = {style: render.render(spec, style) for style in render.styles(spec)}
    for mutation in mutations:
      for style in render.styles(mutation):
        mutant = render.render(mutation, style)
        same = [c for st, c in correct.items()
                if render.source(mutation, st) == mutant.text]  # styles of the same text
        if mutant.text in {c.text for c in correct.values()}:
          continue
        spans = render.mutated_spans(mutant, same)
        nearest = max(same, key=lambda c: difflib.SequenceMatcher(
            None, c.text, mutant.text, autojunk=False).ratio())
        _check_mutated(mutant.text, spans, nearest.text,
                       _reordered(mutant.text, mutant.critical, nearest.text, nearest.critical))
        n += 1
  assert n > 10_000


def test_spans_are_deterministic():
  a = synthetic.generate_problems(60, seed=2, split="valid")
  b = synthetic.generate_problems(60, seed=2, split="valid")
  assert [(p.critical, p.mutated) for p in a] == [(p.critical, p.mutated) for p in b]
  for p in a:
    assert len(p.critical) == len(p.candidates) and len(p.mutated) == len(p.mutants)
    assert all(p.mutated)


def _spec(key: str) -> grammar.Spec:
  """The specification of a key, e.g. ``str:replace=ab,head=2``."""
  family, ops = key.split(":", 1)
  parsed = []
  for op in ops.split(","):
    kind, _, k = op.partition("=")
    parsed.append(grammar.Op(kind, int(k) if re.fullmatch(r"-?\d+", k) else k or None))
  return grammar.Spec(family, tuple(parsed))


def _styles_of(code: str) -> set[str]:
  """The surface styles that write ``code`` (read from its shape)."""
  body = [line.strip() for line in code.splitlines()[1:]]
  if any(line.startswith("if ") for line in body):
    return {"else"} if "else:" in body else {"guard"}
  if " else " in code:
    return {"ternary"}
  if "result = " in code:
    return {"result"}
  return {"steps", "nested"} if len(body) == 1 else {"steps"}


def test_generated_records_carry_their_spans(small_dataset):
  """On the records written by ``write_dataset`` (the session's small dataset): the critical
  spans against the problem's specification, the mutated spans of every incorrect record
  against the problem's correct rendering of the same style."""
  seed = SMALL_DATA["seed"]
  n_incorrect = 0
  for split in synthetic.SPLITS:
    problems = {p.problem_id: p for p in synthetic.generate_problems(
        SMALL_DATA[f"n_{split}"], seed=seed, split=split)}
    store = records.RecordStore(small_dataset / f"{split}.jsonl")
    by_problem = collections.defaultdict(list)
    for i in range(len(store)):
      by_problem[store[i]["problem_id"]].append(store[i])
    for problem_id, rows in by_problem.items():
      problem = problems[problem_id]
      assert [row["output"] for row in rows] == list(problem.candidates)
      solutions = [row for row in rows if row["output"] in problem.solutions]
      for row in rows:
        spec = _spec(problem.key) if row in solutions else None
        _check_critical(row["output"], [tuple(s) for s in row["critical"]], spec)
        assert (row["mutated"] == []) == row["is_correct"], row
        if row["is_correct"]:
          continue
        n_incorrect += 1
        same_style = [render.source(_spec(problem.key), st) for st in _styles_of(row["output"])]
        nearest = max((s for s in solutions if s["output"] in same_style),
                      key=lambda s: difflib.SequenceMatcher(None, s["output"], row["output"],
                                                            autojunk=False).ratio())
        reordered = _reordered(row["output"], row["critical"], nearest["output"],
                               nearest["critical"])
        _check_mutated(row["output"], [tuple(s) for s in row["mutated"]], nearest["output"],
                       reordered)
  assert n_incorrect > 50
