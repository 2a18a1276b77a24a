"""Rendering a specification: its Python source in each surface style, and its instruction.

Chains render as step-by-step assignments (``steps``), a ``result`` accumulator (``result``) or
one nested expression (``nested``); conditionals as a guard clause (``guard``), if/else
(``else``) or a conditional expression (``ternary``). ``shortcuts`` renders a specification with
primitives left out (how degenerate specifications are detected).

``render`` builds the source from lexical units (``Rendering.units``, which concatenate to the
text): an identifier, keyword or number, a run of whitespace or one punctuation character of
the surface style, or a critical unit: one that a primitive's template marks (``«…»`` in
``grammar.PRIMS``), a parenthesis that groups an operand, the ``x`` of a cond branch that keeps
it unchanged. The ground-truth spans (defined in the package docstring) are read off the units:
``Rendering.critical`` and ``mutated_spans``.
"""

import functools
import itertools
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from wmtp_jax.data.synthetic import grammar

Span = tuple[int, int]  # [start, end) character offsets into a source text

_INDENT = "    "
_CHAIN_STYLES = ("steps", "result", "nested")
_COND_STYLES = ("guard", "else", "ternary")
_TEMPLATE_PARTS = re.compile(r"(\{[ae]\}|«[^»]*»)")  # operands and critical units of a template
_LEXEMES = re.compile(r"\w+|\s+|\S")


class Unit(NamedTuple):
  """A lexical unit of rendered code; ``critical``: it encodes the specification."""
  text: str
  critical: bool


@functools.lru_cache(maxsize=4096)
def _lex(text: str) -> tuple[Unit, ...]:
  return tuple(Unit(m.group(), False) for m in _LEXEMES.finditer(text))


def _plain(text: str) -> list[Unit]:
  """The units of surface-style text (no critical unit)."""
  return list(_lex(text))


class Rendering(NamedTuple):
  """Source code as its lexical units (``text`` is their concatenation)."""
  units: tuple[Unit, ...]

  @property
  def text(self) -> str:
    return "".join(u.text for u in self.units)

  def spans(self, indices: Iterable[int]) -> tuple[Span, ...]:
    """The character spans of the units ``indices``: sorted, disjoint, touching ones merged."""
    starts = list(itertools.accumulate((len(u.text) for u in self.units), initial=0))
    spans: list[Span] = []
    for i in sorted(set(indices)):
      if spans and spans[-1][1] == starts[i]:
        spans[-1] = (spans[-1][0], starts[i + 1])
      else:
        spans.append((starts[i], starts[i + 1]))
    return tuple(spans)

  @property
  def critical(self) -> tuple[Span, ...]:
    return self.spans(i for i, u in enumerate(self.units) if u.critical)


def _apply(op: grammar.Op, operand: list[Unit], operand_atomic: bool) -> tuple[list[Unit], bool]:
  """``(expression, atomic)`` of ``op`` applied to ``operand``; parentheses that group the
  operand are critical (they fix the order of steps)."""
  prim = grammar.PRIMS[op.kind]
  wrapped = operand if operand_atomic else [Unit("(", True)] + operand + [Unit(")", True)]
  expr: list[Unit] = []
  for part in _TEMPLATE_PARTS.split(prim.code):
    if part == "{a}":
      expr += wrapped
    elif part == "{e}":
      expr += operand
    elif part.startswith("«"):
      expr.append(Unit(part[1:-1].format(k=op.k), True))
    else:
      expr += _plain(part.format(k=op.k))
  return expr, operand_atomic if prim.atomic is None else prim.atomic


def _function(spec: grammar.Spec, body: Sequence[list[Unit]]) -> Rendering:
  """``def f(...):`` and the indented ``body`` lines; a line's leading whitespace unit joins the
  line break before it."""
  units = _plain(f"def {grammar.ENTRY_POINT}({grammar.FAMILIES[spec.family].params}):")
  for line in body:
    if line[0].text.isspace():
      units += _plain("\n" + _INDENT + line[0].text) + line[1:]
    else:
      units += _plain("\n" + _INDENT) + line
  return Rendering(tuple(units + _plain("\n")))


def _branch(op: grammar.Op) -> list[Unit]:
  """A branch of the cond family: ``op`` applied to ``x``; the ``x`` of a branch that keeps it
  unchanged is critical (it is the branch's value)."""
  return _apply(op, [Unit("x", op.kind == "ident")], True)[0]


def _return(expr: list[Unit]) -> list[Unit]:
  return _plain("return ") + expr


def render(spec: grammar.Spec, style: str) -> Rendering:
  """The Python source of ``spec`` in surface style ``style``, as lexical units."""
  var = grammar.FAMILIES[spec.family].var
  if spec.family == "cond":
    cond = _apply(spec.ops[0], _plain("x"), True)[0]
    then, other = (_branch(op) for op in spec.ops[1:])
    if style == "guard":
      return _function(spec, [_plain("if ") + cond + _plain(":"),
                              _plain(_INDENT) + _return(then), _return(other)])
    if style == "else":
      return _function(spec, [_plain("if ") + cond + _plain(":"), _plain(_INDENT) + _return(then),
                              _plain("else:"), _plain(_INDENT) + _return(other)])
    return _function(spec, [_return(then + _plain(" if ") + cond + _plain(" else ") + other)])
  if style == "steps":  # reassign the variable, return the last step
    body = [_plain(f"{var} = ") + _apply(op, _plain(var), True)[0] for op in spec.ops[:-1]]
    return _function(spec, body + [_return(_apply(spec.ops[-1], _plain(var), True)[0])])
  if style == "result":  # accumulate in `result`
    body, operand = [], var
    for op in spec.ops:
      body.append(_plain("result = ") + _apply(op, _plain(operand), True)[0])
      operand = "result"
    return _function(spec, body + [_return(_plain("result"))])
  expr, atomic = _plain(var), True  # nested: one expression
  for op in spec.ops:
    expr, atomic = _apply(op, expr, atomic)
  return _function(spec, [_return(expr)])


def source(spec: grammar.Spec, style: str) -> str:
  """The Python source of ``spec`` in surface style ``style``."""
  return render(spec, style).text


def styles(spec: grammar.Spec) -> tuple[str, ...]:
  return _COND_STYLES if spec.family == "cond" else _CHAIN_STYLES


def instruction(spec: grammar.Spec) -> str:
  family = grammar.FAMILIES[spec.family]
  head = f"Write a function `{grammar.ENTRY_POINT}({family.params})` that {family.intro}"
  if spec.family == "cond":
    cond, then, other = spec.ops
    return (f"{head} and returns {grammar.BRANCH_NOUNS[then.kind].format(k=then.k)} if x "
            f"{grammar.PRIMS[cond.kind].clause.format(k=cond.k)}, otherwise "
            f"{grammar.BRANCH_NOUNS[other.kind].format(k=other.k)}.")
  clauses = [grammar.PRIMS[op.kind].clause.format(k=op.k) for op in spec.ops]
  if clauses[-1].startswith("returns"):
    steps, end = clauses[:-1], clauses[-1]
  else:
    steps, end = clauses, "returns the result"
  if not steps:
    return f"{head} and {end}."
  return f"{head}, {', then '.join(steps)}, and {end}."


def shortcuts(spec: grammar.Spec) -> list[str]:
  """Code of ``spec`` with primitives left out: one cond branch, or any proper subsequence of a
  chain's steps (the empty one returns the input; a pair keeps its combination of a and b)."""
  if spec.family == "cond":
    return [_function(spec, [_return(_branch(op))]).text for op in spec.ops[1:]]
  first = 1 if spec.family == "pair" else 0
  steps = range(first, len(spec.ops))
  codes = []
  for r in range(len(steps)):
    for kept in itertools.combinations(steps, r):
      ops = spec.ops[:first] + tuple(spec.ops[i] for i in kept)
      codes.append(source(spec._replace(ops=ops), "steps") if ops
                   else _function(spec, [_return(_plain(grammar.FAMILIES[spec.family].var))]).text)
  return codes


def _align(a: Sequence[str], b: Sequence[str]) -> tuple[int, list[tuple[int, int]]]:
  """``(cost, pairs)``: the index pairs ``(i, j)``, increasing, of a best alignment of ``a`` and
  ``b`` (matching equal items), and its cost.

  Best: a longest common subsequence, and of those one with the fewest edit regions (runs of
  unmatched items between two matches), so that a replaced item is one region, not a deletion
  beside an insertion. The cost orders alignments that way (unmatched items, then regions). The
  common prefix and suffix are matched first (some best alignment contains them); the middle is
  aligned by dynamic programming, ties going to a match, then a deletion, then an insertion.
  """
  lo = 0
  while lo < min(len(a), len(b)) and a[lo] == b[lo]:
    lo += 1
  hi = 0
  while hi < min(len(a), len(b)) - lo and a[-1 - hi] == b[-1 - hi]:
    hi += 1
  mid_a, mid_b = a[lo:len(a) - hi], b[lo:len(b) - hi]
  n, m = len(mid_a), len(mid_b)
  unmatched = n + m + 1  # the cost of an unmatched item outweighs that of every region
  # cost[i][j][s]: least cost of aligning mid_a[i:] with mid_b[j:], s: within an edit region.
  cost = [[[0, 0] for _ in range(m + 1)] for _ in range(n + 1)]

  def options(i: int, j: int, s: int) -> list[tuple[int, int, int, int]]:
    """``(cost, i', j', s')`` of each next step from ``(i, j, s)``: match, delete, insert."""
    steps = []
    if i < n and j < m and mid_a[i] == mid_b[j]:
      steps.append((cost[i + 1][j + 1][0], i + 1, j + 1, 0))
    if j < m:
      steps.append((unmatched + 1 - s + cost[i][j + 1][1], i, j + 1, 1))
    if i < n:
      steps.append((unmatched + 1 - s + cost[i + 1][j][1], i + 1, j, 1))
    return steps

  for i in reversed(range(n + 1)):
    for j in reversed(range(m + 1)):
      if i < n or j < m:
        cost[i][j] = [min(options(i, j, s))[0] for s in (0, 1)]
  pairs = [(t, t) for t in range(lo)]
  i = j = s = 0
  while i < n or j < m:
    steps = options(i, j, s)
    _, i2, j2, s = min(steps, key=lambda step: step[0])  # ties: the first listed
    if s == 0:
      pairs.append((lo + i, lo + j))
    i, j = i2, j2
  return cost[0][0][0], pairs + [(len(a) - hi + t, len(b) - hi + t) for t in range(hi)]


def _gap_units(units: Sequence[Unit], i: int) -> list[int]:
  """The units that mark a deletion before unit ``i``: the unit just before it if that is not
  whitespace (what the deleted text was attached to), else the first non-whitespace unit after
  it on its line (with the whitespace in between), else the last one before it (likewise)."""
  if i > 0 and not units[i - 1].text.isspace():
    return [i - 1]
  for j in range(i, len(units)):
    if not units[j].text.isspace():
      return list(range(i, j + 1))
    if "\n" in units[j].text:
      break
  return list(range(max(j for j in range(i) if not units[j].text.isspace()), i))


def mutated_spans(mutant: Rendering, corrects: Sequence[Rendering]) -> tuple[Span, ...]:
  """Where ``mutant`` departs from the nearest of ``corrects`` (the specification rendered in
  each surface style that renders the mutant's specification as ``mutant``).

  The nearest is the one with the best ``_align`` ment of the unit sequences (compared by text).
  The spans cover the units of ``mutant`` that the alignment leaves unmatched and, for each
  deletion (units of the correct rendering with nothing in their place), the units that mark
  it (``_gap_units``). Empty iff the texts are equal.
  """
  a = [u.text for u in mutant.units]
  _, pairs, correct = min((_align(a, [u.text for u in c.units]) + (c,) for c in corrects),
                          key=lambda aligned: aligned[0])
  marked = set(range(len(a))) - {i for i, _ in pairs}
  previous = (-1, -1)
  for i, j in pairs + [(len(a), len(correct.units))]:
    if i == previous[0] + 1 and j > previous[1] + 1:  # correct units deleted, none inserted
      marked.update(_gap_units(mutant.units, i))
    previous = (i, j)
  return mutant.spans(marked)
