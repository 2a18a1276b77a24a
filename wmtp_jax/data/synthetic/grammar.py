"""The grammar of the synthetic task: primitives, families, specifications, their sampling.

A specification (``Spec``) is a family and its primitives (``Op``: a kind of ``PRIMS`` and its
constant); its ``key`` identifies a problem. ``sample_spec`` draws one, ``sample_inputs`` draws
arguments for ``f``, ``mutations`` lists every single-edit mutation (the incorrect candidates).
The families and primitives are described in the package docstring (``wmtp_jax.data.synthetic``).
"""

import random
from collections.abc import Sequence
from typing import Any, NamedTuple

ENTRY_POINT = "f"


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
      ``«…»`` encloses each critical lexical unit (``render``): an operator, a constant, a
      predicate's operator or constant, a function or method name, the parentheses or brackets
      that enclose the operand of a function or comprehension; the markers are not output.
    atomic: whether the resulting expression needs no parentheses as an operand (None: as
      atomic as its operand).
    consts: the constants the generator samples from (empty: no constant).
  """
  clause: str
  code: str
  atomic: bool | None
  consts: tuple = ()


PRIMS = {
    # Integer operations (chains of the int and pair families, branches of cond).
    "add": _Prim("adds {k}", "{a} «+» «{k}»", False, _ints(1, 9)),
    "sub": _Prim("subtracts {k}", "{a} «-» «{k}»", False, _ints(1, 9)),
    "mul": _Prim("multiplies it by {k}", "{a} «*» «{k}»", False, _ints(2, 9)),
    "fdiv": _Prim("divides it by {k} rounding down", "{a} «//» «{k}»", False, _ints(2, 9)),
    "mod": _Prim("takes the remainder modulo {k}", "{a} «%» «{k}»", False, _ints(2, 9)),
    "square": _Prim("squares it", "{a} «**» «2»", False),
    "neg": _Prim("negates it", "«-»{a}", False),
    "abs": _Prim("takes the absolute value", "«abs»«(»{e}«)»", True),
    "ident": _Prim("keeps it unchanged", "{e}", None),  # cond branches and mutants only
    # How the pair family combines a and b (the first step of its chain).
    "plus": _Prim("adds them", "a «+» b", False),
    "minus": _Prim("subtracts b from a", "a «-» b", False),
    "times": _Prim("multiplies them", "a «*» b", False),
    "larger": _Prim("takes the larger of the two", "«max»«(»a, b«)»", True),
    "smaller": _Prim("takes the smaller of the two", "«min»«(»a, b«)»", True),
    # Conditions of the cond family.
    "even": _Prim("is even", "{a} «%» «2» «==» «0»", False),
    "odd": _Prim("is odd", "{a} «%» «2» «==» «1»", False),
    "positive": _Prim("is positive", "{a} «>» «0»", False),
    "negative": _Prim("is negative", "{a} «<» «0»", False),
    "gt": _Prim("is greater than {k}", "{a} «>» «{k}»", False, _ints(0, 9)),
    "lt": _Prim("is less than {k}", "{a} «<» «{k}»", False, _ints(0, 9)),
    "ge": _Prim("is at least {k}", "{a} «>=» «{k}»", False, _ints(0, 9)),
    "le": _Prim("is at most {k}", "{a} «<=» «{k}»", False, _ints(0, 9)),
    "divisible": _Prim("is divisible by {k}", "{a} «%» «{k}» «==» «0»", False,
                       _ints(3, 9)),
    # List steps; a final step's clause starts with "returns".
    "keep_even": _Prim("keeps the even elements",
                       "«[»v for v in {e} if v «%» «2» «==» «0»«]»", True),
    "keep_odd": _Prim("keeps the odd elements",
                      "«[»v for v in {e} if v «%» «2» «==» «1»«]»", True),
    "keep_gt": _Prim("keeps the elements greater than {k}",
                     "«[»v for v in {e} if v «>» «{k}»«]»", True, _ints(0, 6)),
    "keep_lt": _Prim("keeps the elements less than {k}",
                     "«[»v for v in {e} if v «<» «{k}»«]»", True, _ints(0, 6)),
    "drop_eq": _Prim("removes the elements equal to {k}",
                     "«[»v for v in {e} if v «!=» «{k}»«]»", True, _ints(0, 6)),
    "map_mul": _Prim("multiplies each element by {k}", "«[»v «*» «{k}» for v in {e}«]»", True,
                     _ints(2, 5)),
    "map_add": _Prim("adds {k} to each element", "«[»v «+» «{k}» for v in {e}«]»", True,
                     _ints(1, 9)),
    "map_square": _Prim("squares each element", "«[»v «**» «2» for v in {e}«]»", True),
    "sum": _Prim("returns their sum", "«sum»«(»{e}«)»", True),
    "count": _Prim("returns their count", "«len»«(»{e}«)»", True),
    "largest": _Prim("returns the largest one", "«max»«(»{e}«)»", True),
    "smallest": _Prim("returns the smallest one", "«min»«(»{e}«)»", True),
    "reversed": _Prim("returns them in reverse order", "{a}«[::-1]»", True),
    "sorted": _Prim("returns them sorted", "«sorted»«(»{e}«)»", True),
    "them": _Prim("returns them", "{e}", None),
    # String operations.
    "upper": _Prim("converts it to uppercase", "{a}.«upper»()", True),
    "lower": _Prim("converts it to lowercase", "{a}.«lower»()", True),
    "reverse": _Prim("reverses it", "{a}«[::-1]»", True),
    "repeat": _Prim("repeats it {k} times", "{a} «*» «{k}»", False, _ints(2, 4)),
    "append": _Prim('appends "{k}"', '{a} «+» "«{k}»"', False, _PAIRS),
    "prepend": _Prim('prepends "{k}"', '"«{k}»" «+» {a}', False, _PAIRS),
    "head": _Prim("keeps its first {k} characters", "{a}«[:»«{k}»«]»", True, _ints(1, 4)),
    "tail": _Prim("drops its first {k} characters", "{a}«[»«{k}»«:]»", True, _ints(1, 4)),
    "replace": _Prim('replaces every "{k[0]}" with "{k[1]}"',
                     '{a}.«replace»("«{k[0]}»", "«{k[1]}»")', True, _REPLACEMENTS),
    "length": _Prim("returns its length", "«len»«(»{e}«)»", True),
}

# Branch values of the cond family: noun phrases for the int primitives.
BRANCH_NOUNS = {
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


class Op(NamedTuple):
  kind: str
  k: Any = None


class Spec(NamedTuple):
  """A problem specification: ``family`` and its primitives.

  Chains (int, pair, list, str): the operations in application order. cond: (condition,
  then-branch, else-branch).
  """
  family: str
  ops: tuple[Op, ...]

  @property
  def key(self) -> str:
    return self.family + ":" + ",".join(
        op.kind if op.k is None else f"{op.kind}={op.k}" for op in self.ops)


class _Family(NamedTuple):
  """Signature and phrasing of a family of problems."""
  params: str  # the parameter list of ``f``
  var: str  # the variable the chain starts from and the steps assign to
  intro: str  # how the instruction introduces the parameters


FAMILIES = {
    "int": _Family("x", "x", "takes an integer x"),
    "pair": _Family("a, b", "x", "takes two integers a and b"),
    "cond": _Family("x", "x", "takes an integer x"),
    "list": _Family("xs", "xs", "takes a list of integers xs"),
    "str": _Family("s", "s", "takes a string s"),
}
_FAMILY_WEIGHTS = {"int": 0.25, "pair": 0.15, "cond": 0.2, "list": 0.2, "str": 0.2}
_LENGTH_WEIGHTS = (3, 5, 2)  # of the shortest chain of a family, one step more, two more


# ----------------------------------------------------------------------------- sampling


def _op(rng: random.Random, kind: str) -> Op:
  consts = PRIMS[kind].consts
  return Op(kind, rng.choice(consts) if consts else None)


def _chain_kinds(rng: random.Random, n: int, kinds: Sequence[str]) -> list[str]:
  """``n`` kinds, no kind twice in a row."""
  chosen = []
  for _ in range(n):
    chosen.append(rng.choice([k for k in kinds if not chosen or k != chosen[-1]]))
  return chosen


def _n_steps(rng: random.Random, shortest: int) -> int:
  """A chain length in ``shortest … shortest + 2`` (weights ``_LENGTH_WEIGHTS``)."""
  return shortest + rng.choices(range(len(_LENGTH_WEIGHTS)), weights=_LENGTH_WEIGHTS)[0]


def sample_spec(rng: random.Random) -> Spec:
  family = rng.choices(list(_FAMILY_WEIGHTS), weights=list(_FAMILY_WEIGHTS.values()))[0]
  if family == "int":
    kinds = _chain_kinds(rng, _n_steps(rng, 1), _INT_OPS)
  elif family == "pair":
    kinds = [rng.choice(_PAIR_OPS)] + _chain_kinds(rng, _n_steps(rng, 0), _INT_OPS)
  elif family == "cond":
    branches = list(BRANCH_NOUNS)
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
  return Spec(family, tuple(_op(rng, kind) for kind in kinds))


def difficulty(spec: Spec) -> int:
  if spec.family == "cond":
    return 1 + sum(op.kind != "ident" for op in spec.ops[1:])
  return len(spec.ops)


def sample_inputs(rng: random.Random, spec: Spec, n: int) -> list[tuple]:
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


# ----------------------------------------------------------------------------- mutants


def _with_op(spec: Spec, i: int, op: Op) -> Spec:
  return spec._replace(ops=spec.ops[:i] + (op,) + spec.ops[i + 1:])


def mutations(spec: Spec, rng: random.Random) -> list[Spec]:
  """Every single-edit mutation of ``spec`` (order deterministic given ``rng``)."""
  out = []
  for i, op in enumerate(spec.ops):
    if isinstance(op.k, int):  # off-by-one constant (divisors stay positive)
      out += [_with_op(spec, i, op._replace(k=k)) for k in (op.k - 1, op.k + 1)
              if k > 0 or op.kind not in ("fdiv", "mod", "divisible", "repeat")]
    if op.kind == "replace":  # the letters swapped
      out.append(_with_op(spec, i, op._replace(k=op.k[::-1])))
    for kind in _CONFUSIONS.get(op.kind, ()):  # wrong operator / predicate
      consts = PRIMS[kind].consts
      k = None if not consts else op.k if op.k is not None else rng.choice(consts)
      out.append(_with_op(spec, i, Op(kind, k)))
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
