"""Synthetic verifiable code task: the framework's embedded default dataset.

Small templated Python function-writing problems, generated from a seed, whose natural-language
instruction maps deterministically to the code, so that a tiny model can learn the task in a few
CPU minutes and be scored on held-out problems by running tests (pass@1).

Grammar. Every problem asks for a function ``f`` built from a few primitives (constants are small
integers or two-letter strings):

  ``int``   ``f(x)``: a chain of 1–3 integer operations (add / subtract / multiply by k,
            floor-divide by k, remainder modulo k, square, negate, absolute value).
            "Write a function `f(x)` that takes an integer x, multiplies it by 3, then adds 2,
            and returns the result." → ``x = x * 3`` / ``return x + 2``.
  ``pair``  ``f(a, b)``: sum / difference / product / larger / smaller of a and b, then 0–2
            integer operations.
  ``cond``  ``f(x)``: "returns <branch> if x <condition>, otherwise <branch>" with conditions
            even, odd, positive, negative, greater / less than k, at least / at most k,
            divisible by k, and branches x, x plus / minus / times k, x squared, the negation.
  ``list``  ``f(xs)``: 0–2 filter / map steps (keep the even / odd elements, the elements
            greater / less than k, remove those equal to k; multiply each by k, add k to each,
            square each), then a final step (sum, count, largest, smallest, reverse order,
            sorted, or the list itself).
  ``str``   ``f(s)``: a chain of 1–3 string operations (upper / lower case, reverse, repeat k
            times, append / prepend a string, keep / drop the first k characters, replace one
            letter by another, and — last only — the length).

``difficulty`` is the number of primitives (``cond``: the condition plus each branch that is not
plain ``x``), 1–3.

Solutions. The correct candidates of a problem are the canonical code and its equivalent surface
variants (chains: step-by-step assignments, a ``result`` accumulator, one nested expression;
conditionals: guard clause, if/else, conditional expression). The incorrect candidates are
mutants of the problem's specification (a constant off by one, a wrong operator or predicate,
a missing step, two steps swapped, swapped branches), each rendered in a random surface style.
The tests are five ``assert f(...) == ...`` lines on inputs picked from random ones to tell apart
as many single-edit mutations of the specification as possible; their expected values come from
running the canonical solution. Degenerate specifications (``f`` constant, or a primitive that
does not matter, e.g. "multiplies each element by 2, and returns their count") are rejected.
Every candidate is then labelled by running it against the tests in the sandbox
(``wmtp_jax.sandbox``): a mutant that passes (e.g. two commuting steps swapped) is a correct
solution; a canonical solution that fails is a generator bug and raises.

Splits. A problem is identified by its specification key (family, primitives in order, their
constants), e.g. ``int:mul=3,add=2``; the instruction text is a function of the key and vice
versa. Each key belongs to exactly one split, chosen by a salted SHA-256 hash of the key that does
not depend on the seed (80 % train, 10 % valid, 10 % test), so held-out problems are unseen
combinations of the same primitives and constants — for every seed, in every split size.

Files: ``write_dataset`` writes the dataset directory described in ``wmtp_jax.data`` plus
``synthetic.json`` (the generation parameters; written last, so it marks a complete dataset),
which ``ensure_dataset`` compares to reuse a cached dataset. Output is byte-identical for the
same parameters. CLI: ``python -m wmtp_jax.data.synthetic --out DIR [--seed 0] [--n-train N]``.
"""

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from wmtp_jax import sandbox
from wmtp_jax.data import jsonl, records, schema, template, tokenizer

log = logging.getLogger(__name__)

ENTRY_POINT = "f"
SPLITS = ("train", "valid", "test")
SOURCE = "synthetic"
# Bump when the generated data changes, so that cached datasets are regenerated.
GENERATOR_VERSION = 1
DEFAULT_SIZES = {"n_train": 1000, "n_valid": 100, "n_test": 200}
DEFAULT_VOCAB_SIZE = 512
PARAMS_FILE = "synthetic.json"
TOKENIZER_DIR = "tokenizer"

_SPLIT_SALT = "wmtp-synthetic-split-v1"
_SPLIT_BUCKETS = ("train",) * 8 + ("valid", "test")  # hash(key) % 10 → split
_N_TESTS = 5
_N_POOL = 24  # random inputs from which the tests are chosen
_N_MUTANTS = 3
_INDENT = "    "
# Candidates per sandbox program (each runs in its own namespace; see ``_batch_program``).
_BATCH_SIZE = 256


# ----------------------------------------------------------------------------- grammar


def _ints(lo: int, hi: int) -> tuple[int, ...]:
  return tuple(range(lo, hi + 1))


_LETTERS = "abcxyz"
_PAIRS = tuple(a + b for a in _LETTERS for b in _LETTERS)
_REPLACEMENTS = tuple(p for p in _PAIRS if p[0] != p[1])


class _Prim(NamedTuple):
  """A primitive operation.

  Attributes:
    clause: instruction text; ``{k}`` is the constant (``{k[0]}``, ``{k[1]}`` its letters).
    code: expression template; ``{a}`` is the operand where it must be atomic (parenthesised
      otherwise), ``{e}`` the operand where any expression fits, ``{k}`` the constant.
    atomic: whether the resulting expression needs no parentheses as an operand (None: as
      atomic as its operand).
    consts: the constants the generator samples from (empty: no constant).
  """
  clause: str
  code: str
  atomic: bool | None
  consts: tuple = ()


_PRIMS = {
    # Integer operations (chains of the int and pair families, branches of cond).
    "add": _Prim("adds {k}", "{a} + {k}", False, _ints(1, 9)),
    "sub": _Prim("subtracts {k}", "{a} - {k}", False, _ints(1, 9)),
    "mul": _Prim("multiplies it by {k}", "{a} * {k}", False, _ints(2, 9)),
    "fdiv": _Prim("divides it by {k} rounding down", "{a} // {k}", False, _ints(2, 9)),
    "mod": _Prim("takes the remainder modulo {k}", "{a} % {k}", False, _ints(2, 9)),
    "square": _Prim("squares it", "{a} ** 2", False),
    "neg": _Prim("negates it", "-{a}", False),
    "abs": _Prim("takes the absolute value", "abs({e})", True),
    "ident": _Prim("keeps it unchanged", "{e}", None),  # cond branches and mutants only
    # How the pair family combines a and b (the first step of its chain).
    "plus": _Prim("adds them", "a + b", False),
    "minus": _Prim("subtracts b from a", "a - b", False),
    "times": _Prim("multiplies them", "a * b", False),
    "larger": _Prim("takes the larger of the two", "max(a, b)", True),
    "smaller": _Prim("takes the smaller of the two", "min(a, b)", True),
    # Conditions of the cond family.
    "even": _Prim("is even", "{a} % 2 == 0", False),
    "odd": _Prim("is odd", "{a} % 2 == 1", False),
    "positive": _Prim("is positive", "{a} > 0", False),
    "negative": _Prim("is negative", "{a} < 0", False),
    "gt": _Prim("is greater than {k}", "{a} > {k}", False, _ints(0, 9)),
    "lt": _Prim("is less than {k}", "{a} < {k}", False, _ints(0, 9)),
    "ge": _Prim("is at least {k}", "{a} >= {k}", False, _ints(0, 9)),
    "le": _Prim("is at most {k}", "{a} <= {k}", False, _ints(0, 9)),
    "divisible": _Prim("is divisible by {k}", "{a} % {k} == 0", False, _ints(3, 9)),
    # List steps; a final step's clause starts with "returns".
    "keep_even": _Prim("keeps the even elements", "[v for v in {e} if v % 2 == 0]", True),
    "keep_odd": _Prim("keeps the odd elements", "[v for v in {e} if v % 2 == 1]", True),
    "keep_gt": _Prim("keeps the elements greater than {k}", "[v for v in {e} if v > {k}]", True,
                     _ints(0, 6)),
    "keep_lt": _Prim("keeps the elements less than {k}", "[v for v in {e} if v < {k}]", True,
                     _ints(0, 6)),
    "drop_eq": _Prim("removes the elements equal to {k}", "[v for v in {e} if v != {k}]", True,
                     _ints(0, 6)),
    "map_mul": _Prim("multiplies each element by {k}", "[v * {k} for v in {e}]", True,
                     _ints(2, 5)),
    "map_add": _Prim("adds {k} to each element", "[v + {k} for v in {e}]", True, _ints(1, 9)),
    "map_square": _Prim("squares each element", "[v ** 2 for v in {e}]", True),
    "sum": _Prim("returns their sum", "sum({e})", True),
    "count": _Prim("returns their count", "len({e})", True),
    "largest": _Prim("returns the largest one", "max({e})", True),
    "smallest": _Prim("returns the smallest one", "min({e})", True),
    "reversed": _Prim("returns them in reverse order", "{a}[::-1]", True),
    "sorted": _Prim("returns them sorted", "sorted({e})", True),
    "them": _Prim("returns them", "{e}", None),
    # String operations.
    "upper": _Prim("converts it to uppercase", "{a}.upper()", True),
    "lower": _Prim("converts it to lowercase", "{a}.lower()", True),
    "reverse": _Prim("reverses it", "{a}[::-1]", True),
    "repeat": _Prim("repeats it {k} times", "{a} * {k}", False, _ints(2, 4)),
    "append": _Prim('appends "{k}"', '{a} + "{k}"', False, _PAIRS),
    "prepend": _Prim('prepends "{k}"', '"{k}" + {a}', False, _PAIRS),
    "head": _Prim("keeps its first {k} characters", "{a}[:{k}]", True, _ints(1, 4)),
    "tail": _Prim("drops its first {k} characters", "{a}[{k}:]", True, _ints(1, 4)),
    "replace": _Prim('replaces every "{k[0]}" with "{k[1]}"', '{a}.replace("{k[0]}", "{k[1]}")',
                     True, _REPLACEMENTS),
    "length": _Prim("returns its length", "len({e})", True),
}

# Branch values of the cond family: noun phrases for the int primitives.
_BRANCH_NOUNS = {
    "ident": "x",
    "add": "x plus {k}",
    "sub": "x minus {k}",
    "mul": "x times {k}",
    "square": "x squared",
    "neg": "the negation of x",
}

_INT_OPS = ("add", "sub", "mul", "fdiv", "mod", "square", "neg", "abs")
_PAIR_OPS = ("plus", "minus", "times", "larger", "smaller")
_CONDITIONS = ("even", "odd", "positive", "negative", "gt", "lt", "ge", "le", "divisible")
_LIST_FILTERS = ("keep_even", "keep_odd", "keep_gt", "keep_lt", "drop_eq")
_LIST_MAPS = ("map_mul", "map_add", "map_square")
_LIST_FINALS = ("sum", "count", "largest", "smallest", "reversed", "sorted", "them")
_STR_OPS = ("upper", "lower", "reverse", "repeat", "append", "prepend", "head", "tail",
            "replace")

# Wrong-operator mutations: kind → kinds it is plausibly confused with.
_CONFUSIONS = {
    "add": ("sub", "mul"), "sub": ("add",), "mul": ("add", "square"), "fdiv": ("mod", "mul"),
    "mod": ("fdiv",), "square": ("mul", "abs"), "neg": ("abs",), "abs": ("neg", "ident"),
    "ident": ("neg",),
    "plus": ("minus", "times"), "minus": ("plus",), "times": ("plus",), "larger": ("smaller",),
    "smaller": ("larger",),
    "even": ("odd",), "odd": ("even",), "positive": ("negative", "ge"), "negative": ("positive",),
    "gt": ("ge", "lt"), "lt": ("le", "gt"), "ge": ("gt",), "le": ("lt",), "divisible": ("even",),
    "keep_even": ("keep_odd",), "keep_odd": ("keep_even",), "keep_gt": ("keep_lt", "drop_eq"),
    "keep_lt": ("keep_gt",), "drop_eq": ("keep_gt",), "map_mul": ("map_add",),
    "map_add": ("map_mul",), "map_square": ("map_mul",),
    "sum": ("count",), "count": ("sum",), "largest": ("smallest",), "smallest": ("largest",),
    "reversed": ("sorted",), "sorted": ("reversed",), "them": ("reversed",),
    "upper": ("lower",), "lower": ("upper",), "append": ("prepend",), "prepend": ("append",),
    "head": ("tail",), "tail": ("head",), "reverse": ("ident",), "length": ("ident",),
}


class _Op(NamedTuple):
  kind: str
  k: Any = None


class _Spec(NamedTuple):
  """A problem specification: ``family`` and its primitives.

  Chains (int, pair, list, str): the operations in application order. cond: (condition,
  then-branch, else-branch).
  """
  family: str
  ops: tuple[_Op, ...]

  @property
  def key(self) -> str:
    return self.family + ":" + ",".join(
        op.kind if op.k is None else f"{op.kind}={op.k}" for op in self.ops)


class _Family(NamedTuple):
  """Signature and phrasing of a family of problems."""
  params: str  # the parameter list of ``f``
  var: str  # the variable the chain starts from and the steps assign to
  intro: str  # how the instruction introduces the parameters


_FAMILIES = {
    "int": _Family("x", "x", "takes an integer x"),
    "pair": _Family("a, b", "x", "takes two integers a and b"),
    "cond": _Family("x", "x", "takes an integer x"),
    "list": _Family("xs", "xs", "takes a list of integers xs"),
    "str": _Family("s", "s", "takes a string s"),
}
_FAMILY_WEIGHTS = {"int": 0.25, "pair": 0.15, "cond": 0.2, "list": 0.2, "str": 0.2}
_LENGTH_WEIGHTS = (3, 5, 2)  # of the shortest chain of a family, one step more, two more
_CHAIN_STYLES = ("steps", "result", "nested")
_COND_STYLES = ("guard", "else", "ternary")


# ----------------------------------------------------------------------------- sampling


def _op(rng: random.Random, kind: str) -> _Op:
  consts = _PRIMS[kind].consts
  return _Op(kind, rng.choice(consts) if consts else None)


def _chain_kinds(rng: random.Random, n: int, kinds: Sequence[str]) -> list[str]:
  """``n`` kinds, no kind twice in a row."""
  chosen = []
  for _ in range(n):
    chosen.append(rng.choice([k for k in kinds if not chosen or k != chosen[-1]]))
  return chosen


def _n_steps(rng: random.Random, shortest: int) -> int:
  """A chain length in ``shortest … shortest + 2`` (weights ``_LENGTH_WEIGHTS``)."""
  return shortest + rng.choices(range(len(_LENGTH_WEIGHTS)), weights=_LENGTH_WEIGHTS)[0]


def _sample_spec(rng: random.Random) -> _Spec:
  family = rng.choices(list(_FAMILY_WEIGHTS), weights=list(_FAMILY_WEIGHTS.values()))[0]
  if family == "int":
    kinds = _chain_kinds(rng, _n_steps(rng, 1), _INT_OPS)
  elif family == "pair":
    kinds = [rng.choice(_PAIR_OPS)] + _chain_kinds(rng, _n_steps(rng, 0), _INT_OPS)
  elif family == "cond":
    branches = list(_BRANCH_NOUNS)
    then_kind = rng.choice(branches)
    else_kind = rng.choice([b for b in branches if b != then_kind])
    kinds = [rng.choice(_CONDITIONS), then_kind, else_kind]
  elif family == "list":
    steps = _chain_kinds(rng, _n_steps(rng, 0), _LIST_FILTERS + _LIST_MAPS)
    finals = [f for f in _LIST_FINALS if not (f == "them" and not steps)]
    if any(s in _LIST_FILTERS for s in steps):  # max/min of an empty list raises
      finals = [f for f in finals if f not in ("largest", "smallest")]
    kinds = steps + [rng.choice(finals)]
  else:
    kinds = _chain_kinds(rng, _n_steps(rng, 1), _STR_OPS)
    if rng.random() < 0.25:
      kinds[-1] = "length"
  return _Spec(family, tuple(_op(rng, kind) for kind in kinds))


def _difficulty(spec: _Spec) -> int:
  if spec.family == "cond":
    return 1 + sum(op.kind != "ident" for op in spec.ops[1:])
  return len(spec.ops)


def split_of(key: str) -> str:
  """The split that the problem with specification key ``key`` belongs to (seed-independent)."""
  digest = hashlib.sha256(f"{_SPLIT_SALT}:{key}".encode()).digest()
  return _SPLIT_BUCKETS[int.from_bytes(digest[:8], "big") % len(_SPLIT_BUCKETS)]


def _sample_inputs(rng: random.Random, spec: _Spec, n: int) -> list[tuple]:
  """``n`` distinct argument tuples for ``f`` (with integers of both signs and, for a condition
  with a constant k, the inputs k-1, k and k+1), in random order."""
  inputs: list[tuple] = []
  if spec.family in ("int", "cond"):
    inputs += [(rng.randint(-9, -1),), (rng.randint(0, 20),)]
    if spec.family == "cond" and spec.ops[0].k is not None:  # the condition's boundary
      inputs += [(k,) for k in range(spec.ops[0].k - 1, spec.ops[0].k + 2) if (k,) not in inputs]
  needs_items = any(op.kind in ("largest", "smallest") for op in spec.ops)
  while len(inputs) < n:
    if spec.family in ("int", "cond"):
      args = (rng.randint(-9, 20),)
    elif spec.family == "pair":
      args = (rng.randint(-9, 9), rng.randint(-9, 9))
    elif spec.family == "list":
      args = ([rng.randint(-5, 9) for _ in range(rng.randint(int(needs_items), 5))],)
    else:
      args = ("".join(rng.choice(_LETTERS + "ABXY") for _ in range(rng.randint(1, 6))),)
    if args not in inputs:
      inputs.append(args)
  rng.shuffle(inputs)
  return inputs


# ----------------------------------------------------------------------------- rendering


def _apply(op: _Op, operand: str, operand_atomic: bool) -> tuple[str, bool]:
  """``(expression, atomic)`` of ``op`` applied to ``operand``."""
  prim = _PRIMS[op.kind]
  wrapped = operand if operand_atomic else f"({operand})"
  expr = prim.code.format(a=wrapped, e=operand, k=op.k)
  return expr, operand_atomic if prim.atomic is None else prim.atomic


def _function(spec: _Spec, body: Sequence[str]) -> str:
  lines = [f"def {ENTRY_POINT}({_FAMILIES[spec.family].params}):"]
  lines += [_INDENT + line for line in body]
  return "\n".join(lines) + "\n"


def _render(spec: _Spec, style: str) -> str:
  """The Python source of ``spec`` in surface style ``style``."""
  var = _FAMILIES[spec.family].var
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


def _styles(spec: _Spec) -> tuple[str, ...]:
  return _COND_STYLES if spec.family == "cond" else _CHAIN_STYLES


def _instruction(spec: _Spec) -> str:
  family = _FAMILIES[spec.family]
  head = f"Write a function `{ENTRY_POINT}({family.params})` that {family.intro}"
  if spec.family == "cond":
    cond, then, other = spec.ops
    return (f"{head} and returns {_BRANCH_NOUNS[then.kind].format(k=then.k)} if x "
            f"{_PRIMS[cond.kind].clause.format(k=cond.k)}, otherwise "
            f"{_BRANCH_NOUNS[other.kind].format(k=other.k)}.")
  clauses = [_PRIMS[op.kind].clause.format(k=op.k) for op in spec.ops]
  if clauses[-1].startswith("returns"):
    steps, end = clauses[:-1], clauses[-1]
  else:
    steps, end = clauses, "returns the result"
  if not steps:
    return f"{head} and {end}."
  return f"{head}, {', then '.join(steps)}, and {end}."


# ----------------------------------------------------------------------------- mutants


def _with_op(spec: _Spec, i: int, op: _Op) -> _Spec:
  return spec._replace(ops=spec.ops[:i] + (op,) + spec.ops[i + 1:])


def _mutations(spec: _Spec, rng: random.Random) -> list[_Spec]:
  """Every single-edit mutation of ``spec`` (order deterministic given ``rng``)."""
  out = []
  for i, op in enumerate(spec.ops):
    if isinstance(op.k, int):  # off-by-one constant (divisors stay positive)
      out += [_with_op(spec, i, op._replace(k=k)) for k in (op.k - 1, op.k + 1)
              if k > 0 or op.kind not in ("fdiv", "mod", "divisible", "repeat")]
    if op.kind == "replace":  # the letters swapped
      out.append(_with_op(spec, i, op._replace(k=op.k[::-1])))
    for kind in _CONFUSIONS.get(op.kind, ()):  # wrong operator / predicate
      consts = _PRIMS[kind].consts
      k = None if not consts else op.k if op.k is not None else rng.choice(consts)
      out.append(_with_op(spec, i, _Op(kind, k)))
  if spec.family == "cond":
    cond, then, other = spec.ops
    out.append(spec._replace(ops=(cond, other, then)))  # swapped branches
  else:
    first = 1 if spec.family == "pair" else 0  # the pair combination must stay first
    if len(spec.ops) > first + 1:
      out += [spec._replace(ops=spec.ops[:i] + spec.ops[i + 1:])  # missing step
              for i in range(first, len(spec.ops))]
      out += [spec._replace(ops=spec.ops[:i] + (spec.ops[i + 1], spec.ops[i]) + spec.ops[i + 2:])
              for i in range(first, len(spec.ops) - 1)]  # two steps swapped
  return out


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Problem:
  """A synthetic problem with its candidate solutions (unlabelled).

  Attributes:
    problem_id: ``synthetic/{split}/{index:05d}``.
    split: ``train``, ``valid`` or ``test``.
    key: the specification key (family, primitives, constants) that determines the split.
    family: ``int``, ``pair``, ``cond``, ``list`` or ``str``.
    instruction: the task in English.
    difficulty: number of primitives (1–3).
    tests: ``assert f(...) == ...`` lines, expected values computed by running ``solutions[0]``.
    solutions: the canonical solution followed by its equivalent surface variants.
    mutants: plausible incorrect solutions (unlabelled: some may pass the tests).
  """
  problem_id: str
  split: str
  key: str
  family: str
  instruction: str
  difficulty: int
  tests: tuple[str, ...]
  solutions: tuple[str, ...]
  mutants: tuple[str, ...]

  @property
  def test_code(self) -> str:
    return "\n".join(self.tests) + "\n"

  @property
  def candidates(self) -> tuple[str, ...]:
    """``solutions + mutants``, the programs that ``label_candidates`` runs."""
    return self.solutions + self.mutants


def _outputs(code: str, inputs: Sequence[tuple]) -> list[str | None]:
  """``repr`` of what ``code`` (trusted generator output) returns on each input (None: raises)."""
  namespace: dict[str, Any] = {}
  exec(code, namespace)  # pylint: disable=exec-used
  fn = namespace[ENTRY_POINT]
  outputs = []
  for args in inputs:
    try:
      outputs.append(repr(fn(*args)))
    except Exception:  # pylint: disable=broad-except
      outputs.append(None)
  return outputs


def _shortcuts(spec: _Spec) -> list[str]:
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
      codes.append(_render(spec._replace(ops=ops), "steps") if ops
                   else _function(spec, [f"return {_FAMILIES[spec.family].var}"]))
  return codes


def _select_tests(expected: Sequence[str], neighbours: Sequence[Sequence[str | None]]
                  ) -> list[int]:
  """Greedily picks ``_N_TESTS`` input indices that tell the most ``neighbours`` from ``expected``.

  Ties go to inputs with a new expected value, then to the earliest (inputs are in random order).
  Returns the indices in increasing order.
  """
  alive = [n for n in neighbours if list(n) != list(expected)]
  chosen: list[int] = []
  while len(chosen) < _N_TESTS:
    seen = {expected[j] for j in chosen}
    best = max((i for i in range(len(expected)) if i not in chosen),
               key=lambda i: (sum(n[i] != expected[i] for n in alive), expected[i] not in seen))
    chosen.append(best)
    alive = [n for n in alive if n[best] == expected[best]]
  return sorted(chosen)


def _problem(spec: _Spec, rng: random.Random, problem_id: str, split: str) -> Problem | None:
  """The problem of ``spec``, or None if ``spec`` is degenerate.

  Degenerate: on random inputs ``f`` is constant or equals a shortcut (``_shortcuts``: e.g.
  "multiplies each element by 2, and returns their count"). The tests are ``_N_TESTS`` of those
  inputs chosen to tell apart as many single-edit mutations of ``spec`` as possible.
  """
  solutions = list(dict.fromkeys(_render(spec, style) for style in _styles(spec)))
  pool = _sample_inputs(rng, spec, _N_POOL)
  expected = _outputs(solutions[0], pool)
  if None in expected:
    raise RuntimeError(f"{spec.key}: the canonical solution raises:\n{solutions[0]}")
  if len(set(expected)) == 1 or any(_outputs(c, pool) == expected for c in _shortcuts(spec)):
    return None
  mutations = _mutations(spec, rng)
  tests = _select_tests(expected, [_outputs(_render(m, _styles(m)[0]), pool) for m in mutations])
  rng.shuffle(mutations)
  mutants: list[str] = []
  for mutation in mutations:
    code = _render(mutation, rng.choice(_styles(mutation)))
    if code not in solutions and code not in mutants:
      mutants.append(code)
    if len(mutants) == _N_MUTANTS:
      break
  calls = [f"{ENTRY_POINT}({', '.join(map(repr, pool[i]))})" for i in tests]
  return Problem(problem_id=problem_id, split=split, key=spec.key, family=spec.family,
                 instruction=_instruction(spec), difficulty=_difficulty(spec),
                 tests=tuple(f"assert {call} == {expected[i]}" for call, i in zip(calls, tests)),
                 solutions=tuple(solutions), mutants=tuple(mutants))


def generate_problems(n: int, *, seed: int, split: str) -> list[Problem]:
  """``n`` distinct problems of ``split``, deterministic in ``(seed, split)``.

  Specifications are sampled from the grammar and kept when their key hashes to ``split``
  (``split_of``), so the splits never share a specification, whatever the seeds and sizes.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = random.Random(f"wmtp-synthetic:{seed}:{split}")
  problems: list[Problem] = []
  seen: set[str] = set()
  for _ in range(1000 * max(n, 1)):
    if len(problems) == n:
      return problems
    spec = _sample_spec(rng)
    if spec.key in seen or split_of(spec.key) != split:
      continue
    seen.add(spec.key)
    problem = _problem(spec, rng, f"{SOURCE}/{split}/{len(problems):05d}", split)
    if problem is not None:
      problems.append(problem)
  if len(problems) == n:
    return problems
  raise RuntimeError(f"could only generate {len(problems)} distinct {split} problems of {n}")


# ----------------------------------------------------------------------------- labelling


def _batch_program(jobs: Sequence[tuple[str, str]]) -> str:
  """A program that runs each ``(code, test_code)`` job in a fresh namespace.

  A job passes when executing ``code`` then ``test_code`` raises nothing (``BaseException``,
  including ``SystemExit``). The program prints the verdicts as one JSON list on its last line.
  """
  return ("import json\n\n"
          "def _passes(code, tests):\n"
          "  namespace = {'__name__': '__main__'}\n"
          "  try:\n"
          "    exec(code, namespace)\n"
          "    exec(tests, namespace)\n"
          "  except BaseException:\n"
          "    return False\n"
          "  return True\n\n"
          f"_JOBS = {json.dumps(list(jobs))!r}\n"
          "print(json.dumps([_passes(c, t) for c, t in json.loads(_JOBS)]))\n")


def _run_batches(batches: Sequence[Sequence[tuple[str, str]]], workers: int | None
                 ) -> list[list[bool] | None]:
  """The verdicts of each batch, run in the sandbox; None for a batch that did not report them
  (killed, timed out, crashed the interpreter)."""
  results = sandbox.run_many([_batch_program(b) for b in batches], workers=workers)
  out = []
  for batch, result in zip(batches, results):
    lines = result.stdout.strip().splitlines() if result.passed else []
    try:
      verdicts = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
      verdicts = None
    ok = (isinstance(verdicts, list) and len(verdicts) == len(batch)
          and all(isinstance(v, bool) for v in verdicts))
    out.append(verdicts if ok else None)
  return out


def label_candidates(problems: Sequence[Problem], *, workers: int | None = None
                     ) -> list[tuple[bool, ...]]:
  """Runs every candidate of every problem against the problem's tests in the sandbox.

  Returns, per problem, one label per ``problem.candidates`` entry (True: the tests pass).
  The candidates are generator output, not model samples, so ``_BATCH_SIZE`` of them share a
  sandboxed program, each in its own namespace; the candidates of a batch that does not report
  (a candidate that kills the interpreter or hangs) are re-run one program each, and one that
  does not report then fails.
  """
  jobs = [(code, p.test_code) for p in problems for code in p.candidates]
  batches = [jobs[i:i + _BATCH_SIZE] for i in range(0, len(jobs), _BATCH_SIZE)]
  labels: list[bool | None] = []
  for batch, verdicts in zip(batches, _run_batches(batches, workers)):
    labels += verdicts or [None] * len(batch)
  retry = [i for i, label in enumerate(labels) if label is None]
  if retry:
    log.info("re-running %d candidates one program each", len(retry))
    for i, verdicts in zip(retry, _run_batches([[jobs[i]] for i in retry], workers)):
      labels[i] = bool(verdicts and verdicts[0])
  out, start = [], 0
  for p in problems:
    out.append(tuple(labels[start:start + len(p.candidates)]))
    start += len(p.candidates)
  return out


# ----------------------------------------------------------------------------- dataset files


def _solution_records(problem: Problem, labels: Sequence[bool]) -> list[dict]:
  if not labels[0]:
    raise RuntimeError(f"{problem.problem_id} ({problem.key}): the canonical solution fails "
                       f"its tests in the sandbox:\n{problem.solutions[0]}{problem.test_code}")
  return [{"instruction": problem.instruction, "input": "", "output": code,
           "problem_id": problem.problem_id, "is_correct": bool(label),
           "difficulty": problem.difficulty, "source": SOURCE}
          for code, label in zip(problem.candidates, labels)]


def _problem_record(problem: Problem) -> dict:
  return {"problem_id": problem.problem_id, "prompt": problem.instruction,
          "entry_point": ENTRY_POINT, "test_code": problem.test_code, "source": SOURCE,
          "difficulty": problem.difficulty}


def _params(*, seed: int, n_train: int, n_valid: int, n_test: int, vocab_size: int) -> dict:
  """The parameters that determine a dataset's content (recorded in ``synthetic.json``)."""
  return {"generator_version": GENERATOR_VERSION, "seed": seed, "n_train": n_train,
          "n_valid": n_valid, "n_test": n_test, "vocab_size": vocab_size}


def _expected_files(out_dir: Path) -> list[Path]:
  files = [out_dir / TOKENIZER_DIR / "tokenizer.json"]
  for split in SPLITS:
    offsets, meta = records.index_paths(out_dir / f"{split}.jsonl")
    files += [out_dir / f"{split}.jsonl", out_dir / f"{split}.problems.jsonl", offsets, meta]
  return files


def write_dataset(out_dir: str | os.PathLike, *, n_train: int = DEFAULT_SIZES["n_train"],
                  n_valid: int = DEFAULT_SIZES["n_valid"], n_test: int = DEFAULT_SIZES["n_test"],
                  seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
                  workers: int | None = None) -> Path:
  """Generates, labels and writes the synthetic dataset to ``out_dir``; returns its path.

  Writes the layout of ``wmtp_jax.data`` (solution records, evaluation problems, a byte-level BPE
  tokenizer trained on the formatted train examples, the index of every split) and then
  ``synthetic.json``. The index names the tokenizer by its path relative to ``out_dir``
  (``"tokenizer"``), so a dataset directory can be moved or copied. Byte-identical for the same
  parameters (``workers`` only changes the speed).
  """
  started = time.monotonic()
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / PARAMS_FILE).unlink(missing_ok=True)  # incomplete until rewritten at the end
  sizes = {"train": n_train, "valid": n_valid, "test": n_test}
  problems = {split: generate_problems(sizes[split], seed=seed, split=split) for split in SPLITS}
  flat = [p for split in SPLITS for p in problems[split]]
  labels = iter(label_candidates(flat, workers=workers))
  solution_records = {split: [r for p in problems[split] for r in _solution_records(p, next(labels))]
                      for split in SPLITS}
  for split in SPLITS:
    jsonl.write_jsonl(out / f"{split}.jsonl", solution_records[split])
    jsonl.write_jsonl(out / f"{split}.problems.jsonl", map(_problem_record, problems[split]),
                      validate=schema.validate_problem)
  tok = tokenizer.train_bpe_tokenizer(
      [template.format_prompt(r) + r["output"] for r in solution_records["train"]], vocab_size,
      out / TOKENIZER_DIR)
  tok.name_or_path = TOKENIZER_DIR
  length_fn = functools.partial(template.example_length, tokenizer=tok)
  for split in SPLITS:
    records.build_index(out / f"{split}.jsonl", tok, length_fn=length_fn)
  params = _params(seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test,
                   vocab_size=vocab_size)
  with jsonl.atomic_write(out / PARAMS_FILE) as f:
    json.dump(params, f, indent=2, sort_keys=True)
    f.write("\n")
  log.info("synthetic dataset %s: %s records in %.1f s", out,
           {split: len(r) for split, r in solution_records.items()}, time.monotonic() - started)
  return out


def ensure_dataset(out_dir: str | os.PathLike, *, n_train: int = DEFAULT_SIZES["n_train"],
                   n_valid: int = DEFAULT_SIZES["n_valid"], n_test: int = DEFAULT_SIZES["n_test"],
                   seed: int = 0, vocab_size: int = DEFAULT_VOCAB_SIZE,
                   workers: int | None = None) -> Path:
  """Returns ``out_dir`` after making sure it holds the dataset ``write_dataset`` would write.

  A complete dataset (all files present, ``synthetic.json`` equal to these parameters and the
  current ``GENERATOR_VERSION``) is reused as is; anything else is regenerated. Call it from one
  process per directory (e.g. the first host), not concurrently.
  """
  out = Path(out_dir)
  params = _params(seed=seed, n_train=n_train, n_valid=n_valid, n_test=n_test,
                   vocab_size=vocab_size)
  try:
    recorded = json.loads((out / PARAMS_FILE).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    recorded = None
  if recorded == params and all(p.is_file() for p in _expected_files(out)):
    log.info("reusing synthetic dataset %s", out)
    return out
  return write_dataset(out, workers=workers, **{k: v for k, v in params.items()
                                                if k != "generator_version"})


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m wmtp_jax.data.synthetic --out DIR``: writes a dataset and prints its summary."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--seed", type=int, default=0)
  for split in SPLITS:
    parser.add_argument(f"--n-{split}", type=int, default=DEFAULT_SIZES[f"n_{split}"],
                        help=f"number of {split} problems")
  parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
  parser.add_argument("--workers", type=int, default=None, help="sandbox processes")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  out = write_dataset(args.out, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test,
                      seed=args.seed, vocab_size=args.vocab_size, workers=args.workers)
  for split in SPLITS:
    index = records.RecordStore(out / f"{split}.jsonl").meta["problem_index_map"].values()
    correct = sum(len(e["correct_indices"]) for e in index)
    incorrect = sum(len(e["incorrect_indices"]) for e in index)
    longest = max((n for e in index
                   for n in e["correct_token_lengths"] + e["incorrect_token_lengths"]), default=0)
    print(f"{split}: {len(index)} problems, {correct} correct + {incorrect} incorrect solutions, "
          f"longest example {longest} tokens")


if __name__ == "__main__":
  main()
