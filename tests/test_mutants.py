"""Tests of wmtp_jax.data.mutants: deterministic AST mutants, labelled by running their tests."""

import ast
import json
from pathlib import Path

import pytest

from wmtp_jax import sandbox
from wmtp_jax.data.mutants import MutationTask, failing_mutants, generate_mutants

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SOURCE = '''def clip(xs, lo, hi):
    """Clamps every x."""
    out = []
    for x in xs:  # + - < comment
        if x < lo and not x == -1:
            out.append(lo)
        elif x >= hi or x is None:
            out.append(hi)
        else:
            out += [x * 2 // 2]
    return out
'''


def test_generate_mutants_deterministic_distinct_and_parsable():
  first = generate_mutants(SOURCE, 12, seed=3)
  assert first == generate_mutants(SOURCE, 12, seed=3)
  assert first != generate_mutants(SOURCE, 12, seed=4)
  dumps = {ast.dump(ast.parse(m.solution)) for m in first}
  assert len(dumps) == len(first) == 12
  assert ast.dump(ast.parse(SOURCE)) not in dumps


def test_generate_mutants_operators():
  every = generate_mutants(SOURCE, 1000)
  assert {m.operator for m in every} == {
      "compare", "arith", "boolop", "negation", "constant", "return", "delete"}
  solutions = {m.solution for m in every}
  for old, new in [("x < lo", "x <= lo"), ("x >= hi", "x > hi"), ("x == -1", "x != -1"),
                   ("x is None", "x is not None"), ("x * 2 // 2", "x / 2 // 2"),
                   ("x * 2 // 2", "x * 2 / 2"), ("out += ", "out -= "), ("x * 2 //", "x * 3 //"),
                   ("x < lo and", "x < lo or"), ("and not x == -1", "and x == -1"),
                   ("== -1", "== -2"), ("return out", "return None"),
                   ("            out.append(lo)", "            pass")]:
    assert SOURCE.replace(old, new, 1) in solutions, (old, new)
  # The docstring, the comment and the def line are never edited.
  assert all('"""Clamps every x."""' in s and "# + - < comment" in s for s in solutions)
  assert all(s.startswith("def clip(xs, lo, hi):") for s in solutions)


def test_generate_mutants_only_edits_after_the_prefix():
  prefix = "def add(a, b):\n    total = a + b  # é\n"
  solution = "    return total - 0\n"
  mutants = generate_mutants(solution, 100, prefix=prefix)
  assert {m.solution for m in mutants} == {
      "    return total + 0\n", "    return total - 1\n", "    return total - -1\n",
      "    return None\n", "    pass\n"}
  assert all(m.line == 1 for m in mutants)


def test_generate_mutants_unparsable_source():
  assert generate_mutants("print 'python 2'\n", 5) == []


def test_failing_mutants_keeps_only_failing_ones():
  task = MutationTask("double", "", "def double(x):\n    unused = 0\n    return x * 2\n",
                      "\n\nassert double(3) == 6\nassert double(0) == 0\n")
  candidates = generate_mutants(task.solution, 100, seed="0:double")
  # `unused = 0` → `unused = 1` / `-1` / `pass` keep the behaviour: equivalent mutants.
  equivalent = {task.solution.replace("unused = 0", new)
                for new in ("unused = 1", "unused = -1", "pass")}
  assert equivalent <= {m.solution for m in candidates}
  [kept] = failing_mutants([task], 100, timeout_s=10)
  assert kept and not equivalent & {m.solution for m in kept}
  assert {m.solution for m in kept} == {m.solution for m in candidates} - equivalent
  results = sandbox.run_many([task.program(m.solution) for m in kept], timeout_s=10)
  assert not any(r.passed for r in results)


def test_failing_mutants_skips_tasks_whose_reference_fails():
  broken = MutationTask("broken", "", "def f():\n    return 1\n", "\nassert f() == 2\n")
  good = MutationTask("good", "", "def g():\n    return 1\n", "\nassert g() == 1\n")
  kept = failing_mutants([broken, good], 3, timeout_s=10)
  assert kept[0] == [] and len(kept[1]) == 3


@pytest.mark.skipif(not (DATA / "mbpp" / "mbpp.jsonl").is_file(),
                    reason=f"real data not found at {DATA}")
def test_failing_mutants_on_mbpp_problems():
  rows = [json.loads(line) for line in open(DATA / "mbpp" / "mbpp.jsonl")][10:14]
  tasks = [MutationTask(str(r["task_id"]), r["test_setup_code"], r["code"].replace("\r\n", "\n"),
                        "\n\n" + "\n".join(r["test_list"]) + "\n") for r in rows]
  kept = failing_mutants(tasks, 3, seed=1, timeout_s=10)
  assert sum(map(len, kept)) >= 6
  for task, mutants in zip(tasks, kept):
    assert len(mutants) <= 3 and all(m.solution != task.solution for m in mutants)
