"""Negative solutions by mutation: single-edit mutants of a reference solution, labelled by tests.

For datasets with only correct solutions (MBPP, HumanEval), :func:`generate_mutants` makes small
syntactic faults in the reference with the ``ast`` module, each one edit of the source text (so
formatting and comments elsewhere are kept):

  ``compare``   ``<``↔``<=``, ``>``↔``>=``, ``==``↔``!=``, ``in``↔``not in``, ``is``↔``is not``
  ``arith``     ``+``↔``-``, ``*``→``/``, ``/``→``*``, ``//``→``/``, ``%``→``//``, ``**``→``*``,
                ``<<``↔``>>``, ``&``↔``|``, ``^``→``|`` (also in augmented assignments)
  ``boolop``    ``and``↔``or``;   ``negation``: ``not x`` → ``x``
  ``constant``  integer ``k`` → ``k+1`` and ``k-1``, ``True``↔``False``
  ``return``    ``return x`` → ``return None``
  ``delete``    a simple statement (assignment, expression, return, break, …) → ``pass``

Candidates are shuffled by a ``random.Random`` seeded with ``f"{seed}:{key}"`` and the first
``n`` that parse and differ (by AST) from the original and from each other are kept, so the
result is deterministic. :func:`failing_mutants` runs the tests of every mutant in the sandbox
and keeps only those that fail: a mutant that still passes (an equivalent or undetected mutant)
is dropped, never labelled incorrect (nor kept as correct: it is not a reference solution). When
the reference itself fails its tests, the problem gets no mutants.
"""

import ast
import dataclasses
import logging
import random
import re
from collections.abc import Iterator, Sequence

from wmtp_jax import sandbox

log = logging.getLogger(__name__)

_COMPARE = {
    ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">"),
    ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.In: ("in", "not in"),
    ast.NotIn: (r"not\s+in", "in"), ast.Is: ("is", "is not"), ast.IsNot: (r"is\s+not", "is"),
}
_ARITH = {
    ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
    ast.FloorDiv: ("//", "/"), ast.Mod: ("%", "//"), ast.Pow: ("**", "*"),
    ast.LShift: ("<<", ">>"), ast.RShift: (">>", "<<"), ast.BitAnd: ("&", "|"),
    ast.BitOr: ("|", "&"), ast.BitXor: ("^", "|"),
}
_BOOLOP = {ast.And: ("and", "or"), ast.Or: ("or", "and")}
_DELETABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return, ast.Raise,
              ast.Break, ast.Continue, ast.Assert, ast.Delete)  # simple statements only


@dataclasses.dataclass(frozen=True)
class Mutant:
  """A mutated solution: ``solution`` replaces the reference; ``line`` is 1-based in it."""
  solution: str
  operator: str
  line: int


@dataclasses.dataclass(frozen=True)
class MutationTask:
  """A reference solution with its tests: the program run is ``prefix + solution + suffix``.

  ``prefix`` is code before the solution that is never mutated (a HumanEval prompt the solution
  continues, MBPP's ``test_setup_code``); ``suffix`` runs the tests (asserts, ``check(f)``) and
  must raise or exit non-zero when they fail. ``key`` (e.g. the problem id) seeds the shuffle.
  """
  key: str
  prefix: str
  solution: str
  suffix: str

  def program(self, solution: str) -> str:
    return self.prefix + solution + self.suffix


@dataclasses.dataclass(frozen=True)
class _Edit:
  start: int  # byte offsets into the UTF-8 source
  end: int
  text: str
  operator: str


class _Locator:
  """Byte offsets of AST positions (``col_offset`` counts UTF-8 bytes within its line)."""

  def __init__(self, source: bytes):
    self.source = source
    self.line_starts = [0]
    for i, byte in enumerate(source):
      if byte == ord("\n"):
        self.line_starts.append(i + 1)

  def start(self, node: ast.AST) -> int:
    return self.line_starts[node.lineno - 1] + node.col_offset

  def end(self, node: ast.AST) -> int:
    return self.line_starts[node.end_lineno - 1] + node.end_col_offset


def _operator_edit(loc: _Locator, left: ast.AST, right: ast.AST, pattern: str,
                   replacement: str, operator: str) -> _Edit | None:
  """Replaces the operator token between two operands, if the gap holds only it."""
  a, b = loc.end(left), loc.start(right)
  gap = loc.source[a:b].decode("utf-8")
  match = re.fullmatch(rf"[\s()\\]*({pattern})[\s()\\]*", gap)
  if match is None:  # a comment or something unexpected between the operands
    return None
  start = a + len(gap[:match.start(1)].encode("utf-8"))
  end = a + len(gap[:match.end(1)].encode("utf-8"))
  return _Edit(start, end, replacement, operator)


def _node_edits(node: ast.AST, loc: _Locator) -> Iterator[_Edit | None]:
  """Candidate edits of one node (``None`` where an operator token could not be located)."""
  if isinstance(node, ast.Compare):
    operands = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
      pattern, replacement = _COMPARE[type(op)]  # patterns are regexes
      yield _operator_edit(loc, operands[i], operands[i + 1], pattern, replacement, "compare")
  elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
    symbol, replacement = _ARITH[type(node.op)]
    yield _operator_edit(loc, node.left, node.right, re.escape(symbol), replacement, "arith")
  elif isinstance(node, ast.AugAssign) and type(node.op) in _ARITH:
    symbol, replacement = _ARITH[type(node.op)]
    yield _operator_edit(loc, node.target, node.value, re.escape(symbol + "="),
                         replacement + "=", "arith")
  elif isinstance(node, ast.BoolOp):
    word, replacement = _BOOLOP[type(node.op)]
    for left, right in zip(node.values, node.values[1:]):
      yield _operator_edit(loc, left, right, word, replacement, "boolop")
  elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
    start = loc.start(node)
    keyword = re.match(rb"not\s*", loc.source[start:loc.start(node.operand)])
    yield _Edit(start, start + keyword.end(), "", "negation")
  elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
    yield _Edit(loc.start(node), loc.end(node), str(not node.value), "constant")
  elif isinstance(node, ast.Constant) and type(node.value) is int:
    for delta in (1, -1):
      yield _Edit(loc.start(node), loc.end(node), str(node.value + delta), "constant")
  if isinstance(node, ast.Return) and node.value is not None and not (
      isinstance(node.value, ast.Constant) and node.value.value is None):
    yield _Edit(loc.start(node.value), loc.end(node.value), "None", "return")
  if isinstance(node, _DELETABLE) and not (
      isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):  # docstrings
    yield _Edit(loc.start(node), loc.end(node), "pass", "delete")


def _candidate_edits(tree: ast.AST, loc: _Locator, region_start: int) -> list[_Edit]:
  """All edits inside ``source[region_start:]``, in AST walk order (f-string parts excluded)."""
  in_fstring = {id(n) for f in ast.walk(tree) if isinstance(f, ast.JoinedStr)
                for n in ast.walk(f)}
  edits = []
  for node in ast.walk(tree):
    if (id(node) in in_fstring or not hasattr(node, "lineno")
        or loc.start(node) < region_start):
      continue
    edits.extend(e for e in _node_edits(node, loc) if e is not None and e.start >= region_start)
  return edits


def generate_mutants(solution: str, n: int, *, seed: int | str = 0,
                     prefix: str = "") -> list[Mutant]:
  """Up to ``n`` distinct single-edit mutants of ``solution`` (module docstring).

  ``prefix + solution`` must parse as Python 3 with ``\\n`` line ends (otherwise: no mutants);
  only the ``solution`` part is edited. Deterministic for the same arguments.
  """
  source = (prefix + solution).encode("utf-8")
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  loc = _Locator(source)
  region_start = len(prefix.encode("utf-8"))
  edits = _candidate_edits(tree, loc, region_start)
  random.Random(str(seed)).shuffle(edits)
  seen = {ast.dump(tree)}
  mutants = []
  for edit in edits:
    if len(mutants) == n:
      break
    mutated = source[:edit.start] + edit.text.encode("utf-8") + source[edit.end:]
    try:
      dump = ast.dump(ast.parse(mutated))
    except (SyntaxError, ValueError):
      continue
    if dump in seen:
      continue
    seen.add(dump)
    line = source.count(b"\n", region_start, edit.start) + 1
    mutants.append(Mutant(mutated[region_start:].decode("utf-8"), edit.operator, line))
  return mutants


def failing_mutants(tasks: Sequence[MutationTask], n: int, *, seed: int = 0,
                    timeout_s: float = 5.0, memory_mb: int = 1024,
                    workers: int | None = None) -> list[list[Mutant]]:
  """For each task, the mutants (at most ``n``) that fail its tests when run in the sandbox.

  All references and mutants run in one ``sandbox.run_many`` batch. A task whose reference
  fails gets ``[]``; mutants that pass are dropped. Counts are logged.
  """
  candidates = [generate_mutants(t.solution, n, seed=f"{seed}:{t.key}", prefix=t.prefix)
                for t in tasks]
  programs = [t.program(s) for t, ms in zip(tasks, candidates)
              for s in (t.solution, *(m.solution for m in ms))]
  results = iter(sandbox.run_many(programs, workers=workers, timeout_s=timeout_s,
                                  memory_mb=memory_mb))
  kept, broken_references, survivors = [], 0, 0
  for ms in candidates:
    reference_passed = next(results).passed
    failing = [m for m in ms if not next(results).passed]
    if not reference_passed:
      broken_references += 1
      failing = []
    else:
      survivors += len(ms) - len(failing)
    kept.append(failing)
  log.info("mutants: %d tasks, %d generated, %d failing kept, %d passing dropped, "
           "%d tasks skipped (reference fails its tests)", len(tasks),
           sum(map(len, candidates)), sum(map(len, kept)), survivors, broken_references)
  return kept
