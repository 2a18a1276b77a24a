"""Tests of wmtp_jax.data.synthetic.label: labels come from running the tests in the sandbox."""

from wmtp_jax.data import synthetic


def test_solutions_pass_and_mutants_mostly_fail():
  problems = synthetic.generate_problems(150, seed=5, split="valid")
  labels = synthetic.label_candidates(problems)
  killed = total = 0
  for p, row in zip(problems, labels):
    assert len(row) == len(p.candidates)
    assert all(row[:len(p.solutions)]), p.key  # every surface variant is correct
    killed += row.count(False)
    total += len(p.mutants)
  # Tests are chosen to detect mutations; the survivors are behaviour-equivalent (commuting steps).
  assert killed / total > 0.85


def test_labels_come_from_running():
  problem = synthetic.Problem(
      problem_id="synthetic/test/hand", split="test", key="int:mul=2", family="int",
      instruction="Write a function `f(x)` that takes an integer x, multiplies it by 2, "
      "and returns the result.", difficulty=1,
      tests=("assert f(3) == 6", "assert f(-4) == -8"),
      solutions=("def f(x):\n    return x * 2\n",),
      mutants=(
          "def f(x):\n    return x + x\n",  # a "mutant" that behaves the same: correct
          "def f(x):\n    return x * 3\n",
          "def f(x):\n    raise SystemExit(0)\n",  # exits cleanly before the tests finish
          "import os\nos.abort()\n",  # kills its batch: every candidate is re-run alone
      ), critical=((),) * 5, mutated=((),) * 4)
  assert synthetic.label_candidates([problem]) == [(True, True, False, False, False)]
