"""Tests of the problems of wmtp_jax.data.synthetic (grammar, render, problems modules).

Determinism, disjoint splits, the fields of generated problems, argument checks.
"""

import pytest

from wmtp_jax.data import synthetic


def _kinds(key: str) -> list[str]:
  """The primitive kinds of a specification key, e.g. ``int:mul=3,add=2`` → [mul, add]."""
  return [part.split("=")[0] for part in key.split(":", 1)[1].split(",")]


def test_generate_problems_is_deterministic():
  a = synthetic.generate_problems(40, seed=3, split="train")
  assert a == synthetic.generate_problems(40, seed=3, split="train")
  b = synthetic.generate_problems(40, seed=4, split="train")
  assert [p.key for p in a] != [p.key for p in b]


def test_splits_are_disjoint_for_any_seed():
  sizes = {"train": 400, "valid": 50, "test": 100}
  keys = {split: set() for split in synthetic.SPLITS}
  instructions = {split: set() for split in synthetic.SPLITS}
  for seed in (0, 1):
    for split, n in sizes.items():
      problems = synthetic.generate_problems(n, seed=seed, split=split)
      assert len({p.key for p in problems}) == n  # distinct within a split
      for p in problems:
        assert p.split == split == synthetic.split_of(p.key)
        keys[split].add(p.key)
        instructions[split].add(p.instruction)
  for i, a in enumerate(synthetic.SPLITS):
    for b in synthetic.SPLITS[i + 1:]:
      assert not keys[a] & keys[b], (a, b)
      assert not instructions[a] & instructions[b], (a, b)
  # The instruction determines the specification (and so the solution).
  assert sum(map(len, instructions.values())) == sum(map(len, keys.values()))
  # Held-out problems combine primitives that training problems use.
  train_kinds = {k for key in keys["train"] for k in _kinds(key)}
  assert {k for key in keys["test"] for k in _kinds(key)} <= train_kinds


def test_problem_fields():
  problems = synthetic.generate_problems(300, seed=0, split="train")
  assert len({p.problem_id for p in problems}) == len(problems)
  assert {p.family for p in problems} == {"int", "pair", "cond", "list", "str"}
  assert {p.difficulty for p in problems} == {1, 2, 3}
  for p in problems:
    assert p.instruction.startswith("Write a function `f(")
    assert len(p.tests) == 5 and all(t.startswith("assert f(") for t in p.tests)
    assert len({t.rsplit(" == ", 1)[1] for t in p.tests}) > 1  # not a constant function
    assert p.test_code == "\n".join(p.tests) + "\n"
    assert len(set(p.solutions)) == len(p.solutions) >= 2
    assert 1 <= len(p.mutants) <= 3 and not set(p.mutants) & set(p.solutions)
    assert p.candidates == p.solutions + p.mutants


def test_invalid_arguments():
  with pytest.raises(ValueError, match="split"):
    synthetic.generate_problems(1, seed=0, split="dev")
  with pytest.raises(ValueError, match="n must be"):
    synthetic.generate_problems(-1, seed=0, split="train")
  assert synthetic.generate_problems(0, seed=0, split="test") == []
