"""Rendering a specification: its Python source in each surface style, and its instruction.

Chains render as step-by-step assignments (``steps``), a ``result`` accumulator (``result``) or
one nested expression (``nested``); conditionals as a guard clause (``guard``), if/else
(``else``) or a conditional expression (``ternary``). ``shortcuts`` renders a specification with
primitives left out (how degenerate specifications are detected).
"""

import itertools
from collections.abc import Sequence

from wmtp_jax.data.synthetic import grammar

_INDENT = "    "
_CHAIN_STYLES = ("steps", "result", "nested")
_COND_STYLES = ("guard", "else", "ternary")


def _apply(op: grammar.Op, operand: str, operand_atomic: bool) -> tuple[str, bool]:
  """``(expression, atomic)`` of ``op`` applied to ``operand``."""
  prim = grammar.PRIMS[op.kind]
  wrapped = operand if operand_atomic else f"({operand})"
  expr = prim.code.format(a=wrapped, e=operand, k=op.k)
  return expr, operand_atomic if prim.atomic is None else prim.atomic


def _function(spec: grammar.Spec, body: Sequence[str]) -> str:
  lines = [f"def {grammar.ENTRY_POINT}({grammar.FAMILIES[spec.family].params}):"]
  lines += [_INDENT + line for line in body]
  return "\n".join(lines) + "\n"


def source(spec: grammar.Spec, style: str) -> str:
  """The Python source of ``spec`` in surface style ``style``."""
  var = grammar.FAMILIES[spec.family].var
  if spec.family == "cond":
    cond, then, other = (_apply(op, "x", True)[0] for op in spec.ops)
    if style == "guard":
      return _function(spec, [f"if {cond}:", f"{_INDENT}return {then}", f"return {other}"])
    if style == "else":
      return _function(spec, [f"if {cond}:", f"{_INDENT}return {then}", "else:",
                              f"{_INDENT}return {other}"])
    return _function(spec, [f"return {then} if {cond} else {other}"])
  if style == "steps":  # reassign the variable, return the last step
    body = [f"{var} = {_apply(op, var, True)[0]}" for op in spec.ops[:-1]]
    return _function(spec, body + [f"return {_apply(spec.ops[-1], var, True)[0]}"])
  if style == "result":  # accumulate in `result`
    body, operand = [], var
    for op in spec.ops:
      body.append(f"result = {_apply(op, operand, True)[0]}")
      operand = "result"
    return _function(spec, body + ["return result"])
  expr, atomic = var, True  # nested: one expression
  for op in spec.ops:
    expr, atomic = _apply(op, expr, atomic)
  return _function(spec, [f"return {expr}"])


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
    return [_function(spec, [f"return {_apply(op, 'x', True)[0]}"]) for op in spec.ops[1:]]
  first = 1 if spec.family == "pair" else 0
  steps = range(first, len(spec.ops))
  codes = []
  for r in range(len(steps)):
    for kept in itertools.combinations(steps, r):
      ops = spec.ops[:first] + tuple(spec.ops[i] for i in kept)
      codes.append(source(spec._replace(ops=ops), "steps") if ops
                   else _function(spec, [f"return {grammar.FAMILIES[spec.family].var}"]))
  return codes
