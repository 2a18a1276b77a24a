"""Problems of the synthetic task: the split of a specification, tests, ``generate_problems``.

A problem is a specification with its instruction, its tests (``assert f(...) == ...`` lines on
inputs chosen to tell apart as many single-edit mutations as possible, expected values from
running the canonical solution), its correct solutions (the surface variants) and its mutants,
with the ground-truth spans of each (``critical``, ``mutated``: see the package docstring).
"""

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from typing import Any

from wmtp_jax.data.synthetic import grammar, render
from wmtp_jax.data.synthetic.render import Span

SPLITS = ("train", "valid", "test")
PRETRAIN = "pretrain"  # the pre-training corpus's problems (``generate_problems``)
SOURCE = "synthetic"

_SPLIT_SALT = "wmtp-synthetic-split-v1"
_SPLIT_BUCKETS = ("train",) * 8 + ("valid", "test")  # hash(key) % 10 → split
_N_TESTS = 5
_N_POOL = 24  # random inputs from which the tests are chosen
_N_MUTANTS = 3


def split_of(key: str) -> str:
  """The split that the problem with specification key ``key`` belongs to (seed-independent)."""
  digest = hashlib.sha256(f"{_SPLIT_SALT}:{key}".encode()).digest()
  return _SPLIT_BUCKETS[int.from_bytes(digest[:8], "big") % len(_SPLIT_BUCKETS)]


@dataclasses.dataclass(frozen=True)
class Problem:
  """A synthetic problem with its candidate solutions (unlabelled).

  Attributes:
    problem_id: ``synthetic/{split}/{index:05d}``.
    split: ``train``, ``valid``, ``test`` or ``pretrain``.
    key: the specification key (family, primitives, constants) that determines the split.
    family: ``int``, ``pair``, ``cond``, ``list`` or ``str``.
    instruction: the task in English.
    difficulty: number of primitives (1–3).
    tests: ``assert f(...) == ...`` lines, expected values computed by running ``solutions[0]``.
    solutions: the canonical solution followed by its equivalent surface variants.
    mutants: plausible incorrect solutions (unlabelled: some may pass the tests).
    critical: per candidate (``candidates`` order), the spans of its critical units.
    mutated: per mutant, the spans where it departs from the specification rendered in its
      surface style (``render.mutated_spans``; never empty).
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
  critical: tuple[tuple[Span, ...], ...]
  mutated: tuple[tuple[Span, ...], ...]

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
  fn = namespace[grammar.ENTRY_POINT]
  outputs = []
  for args in inputs:
    try:
      outputs.append(repr(fn(*args)))
    except Exception:  # pylint: disable=broad-except
      outputs.append(None)
  return outputs


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


def _problem(spec: grammar.Spec, rng: random.Random, problem_id: str, split: str) -> Problem | None:
  """The problem of ``spec``, or None if ``spec`` is degenerate.

  Degenerate: on random inputs ``f`` is constant or equals a shortcut (``render.shortcuts``: e.g.
  "multiplies each element by 2, and returns their count"). The tests are ``_N_TESTS`` of those
  inputs chosen to tell apart as many single-edit mutations of ``spec`` as possible. A mutant's
  ``mutated`` spans compare it with ``spec`` rendered in the mutant's surface style (the nearest
  of those styles that render the mutation as the same text).
  """
  correct = {style: render.render(spec, style) for style in render.styles(spec)}
  renderings = list(dict.fromkeys(correct.values()))  # styles that coincide give one solution
  solutions = [r.text for r in renderings]
  pool = grammar.sample_inputs(rng, spec, _N_POOL)
  expected = _outputs(solutions[0], pool)
  if None in expected:
    raise RuntimeError(f"{spec.key}: the canonical solution raises:\n{solutions[0]}")
  if len(set(expected)) == 1 or any(_outputs(c, pool) == expected for c in render.shortcuts(spec)):
    return None
  mutations = grammar.mutations(spec, rng)
  neighbours = [_outputs(render.source(m, render.styles(m)[0]), pool) for m in mutations]
  tests = _select_tests(expected, neighbours)
  rng.shuffle(mutations)
  mutants: list[render.Rendering] = []
  mutated: list[tuple[Span, ...]] = []
  for mutation in mutations:
    style = rng.choice(render.styles(mutation))
    mutant = render.render(mutation, style)
    if mutant.text not in solutions and mutant.text not in (m.text for m in mutants):
      mutants.append(mutant)
      mutated.append(render.mutated_spans(mutant, [
          correct[s] for s in render.styles(spec) if render.source(mutation, s) == mutant.text]))
    if len(mutants) == _N_MUTANTS:
      break
  calls = [f"{grammar.ENTRY_POINT}({', '.join(map(repr, pool[i]))})" for i in tests]
  return Problem(problem_id=problem_id, split=split, key=spec.key, family=spec.family,
                 instruction=render.instruction(spec), difficulty=grammar.difficulty(spec),
                 tests=tuple(f"assert {call} == {expected[i]}" for call, i in zip(calls, tests)),
                 solutions=tuple(solutions), mutants=tuple(m.text for m in mutants),
                 critical=tuple(r.critical for r in renderings + mutants), mutated=tuple(mutated))


def generate_problems(n: int, *, seed: int, split: str,
                      exclude: frozenset[str] = frozenset()) -> list[Problem]:
  """``n`` distinct problems of ``split``, deterministic in ``(seed, split, exclude)``.

  Specifications are sampled from the grammar and kept when their key hashes to ``split``
  (``split_of``), so the splits never share a specification, whatever the seeds and sizes.
  ``split="pretrain"`` (``PRETRAIN``) draws from the keys that hash to ``train``, less the keys in
  ``exclude`` (the fine-tuning train problems of a dataset): never a valid or test problem, and
  none of the excluded ones, while the three splits stay exactly as they were.
  """
  if split not in (*SPLITS, PRETRAIN):
    raise ValueError(f"split must be one of {(*SPLITS, PRETRAIN)}, got {split!r}")
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  rng = random.Random(f"wmtp-synthetic:{seed}:{split}")
  problems: list[Problem] = []
  seen: set[str] = set()
  for _ in range(1000 * max(n, 1)):
    if len(problems) == n:
      return problems
    spec = grammar.sample_spec(rng)
    bucket = "train" if split == PRETRAIN else split
    if spec.key in seen or spec.key in exclude or split_of(spec.key) != bucket:
      continue
    seen.add(spec.key)
    problem = _problem(spec, rng, f"{SOURCE}/{split}/{len(problems):05d}", split)
    if problem is not None:
      problems.append(problem)
  if len(problems) == n:
    return problems
  raise RuntimeError(f"could only generate {len(problems)} distinct {split} problems of {n}")
