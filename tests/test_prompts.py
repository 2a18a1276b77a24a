"""Prompts (``eval.prompts``): every benchmark in both modes against fixture strings written out
here, MBPP's function-name instruction against the reference's rule on the real file, and where
completions stop with and without a trained EOS."""

import json
import pathlib
import re

import pytest

from wmtp_jax.eval import benchmarks, prompts

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
HEADER = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n")
PROBLEMS = {
    "synthetic": {"problem_id": "synthetic/test/00000", "source": "synthetic",
                  "prompt": "Write a function `f(x)` that takes an integer x and returns x plus 4.",
                  "entry_point": "f", "test_code": "assert f(1) == 5\n"},
    "humaneval": {"problem_id": "HumanEval/0", "source": "humaneval", "entry_point": "add",
                  "prompt": 'def add(a, b):\n    """Add a and b."""\n',
                  "test_code": "def check(candidate):\n    assert candidate(1, 2) == 3\n"},
    "mbpp": {"problem_id": "mbpp/11", "source": "mbpp",
             "prompt": '"""\nWrite a python function to remove first and last occurrence of a '
                       'given character from the string.\nassert remove_Occ("hello","l") == '
                       '"heo"\n"""\n',
             "test_code": 'assert remove_Occ("hello","l") == "heo"\n'
                          'assert remove_Occ("abcda","a") == "bcd"\n'},
    "codecontests": {"problem_id": "1548_A", "source": "codecontests",
                     "prompt": "Given n, print n + 1.\n\nInput\n\nOne integer n.",
                     "tests": [{"input": "1\n", "output": "2\n"}]},
    "gsm8k": {"problem_id": "gsm8k/test/0", "source": "gsm8k", "answer": "3",
              "prompt": "Janet has 3 apples. How many apples does Janet have?"},
}
FINETUNED = {
    "synthetic": HEADER + "Write a function `f(x)` that takes an integer x and returns x plus 4."
                          "\n\n### Response:\n",
    "humaneval": 'def add(a, b):\n    """Add a and b."""\n',
    "mbpp": HEADER + "Write a python function to remove first and last occurrence of a given "
                     "character from the string.\n\nThe function should be named 'remove_Occ'."
                     "\n\n### Response:\n",
    "codecontests": HEADER + "Write a Python solution that reads from stdin and prints to stdout."
                             "\n\nGiven n, print n + 1.\n\nInput\n\nOne integer n.\n\n"
                             "### Response:\n",
    "gsm8k": HEADER + "Janet has 3 apples. How many apples does Janet have?\n\n### Response:\n",
}
BASE = {
    "synthetic": '"""\nWrite a function `f(x)` that takes an integer x and returns x plus 4.\n'
                 '"""\n',
    "humaneval": 'def add(a, b):\n    """Add a and b."""\n',
    "mbpp": '"""\nWrite a python function to remove first and last occurrence of a given '
            'character from the string.\nassert remove_Occ("hello","l") == "heo"\n"""\n',
    "codecontests": '"""\nWrite a Python solution that reads from stdin and prints to stdout.\n\n'
                    'Given n, print n + 1.\n\nInput\n\nOne integer n.\n"""\n',
    "gsm8k": "Question: Janet has 3 apples. How many apples does Janet have?\nAnswer:",
}


@pytest.mark.parametrize("benchmark", sorted(PROBLEMS))
def test_prompts_of_every_benchmark_in_both_modes(benchmark):
  problem = PROBLEMS[benchmark]
  assert prompts.benchmark_of([problem]) == benchmark
  assert prompts.Format(benchmark, "finetuned").prompt(problem) == FINETUNED[benchmark]
  assert prompts.Format(benchmark, "base").prompt(problem) == BASE[benchmark]
  for mode in prompts.PROMPT_MODES:
    assert prompts.Format(benchmark, mode).continues_prompt == (benchmark == "humaneval")


def test_mbpp_function_name_instruction_matches_the_reference_rule_on_the_real_file():
  """The reference's converter: ``text + "\\n\\nThe function should be named '{name}'."``, the
  name from ``assert\\s+(\\w+)\\s*\\(`` on the first test; here from our stored problems."""
  path = DATA / "mbpp" / "mbpp.jsonl"
  if not path.exists():
    pytest.skip(f"{path} not found: the shared data folder is absent")
  rows = {f"mbpp/{r['task_id']}": r for r in map(json.loads, path.read_text().splitlines())}
  problems = benchmarks.load_problems("mbpp", path)
  assert len(problems) == 500
  for problem in problems:
    row = rows[problem["problem_id"]]
    name = re.search(r"assert\s+(\w+)\s*\(", row["test_list"][0]).group(1)
    want = f"{row['text']}\n\nThe function should be named '{name}'."
    assert prompts.instruction(problem, "mbpp") == want, problem["problem_id"]


def test_modes_and_sources_are_checked():
  with pytest.raises(ValueError, match="prompt mode='raw': expected one of"):
    prompts.Format("mbpp", "raw")
  with pytest.raises(ValueError, match="several sources"):
    prompts.benchmark_of([PROBLEMS["mbpp"], PROBLEMS["gsm8k"]])
  assert prompts.benchmark_of([{**PROBLEMS["mbpp"], "source": "mbpp-sanitized"}]) == "mbpp"
  with pytest.raises(ValueError, match="mbpp/11.*harness docstring"):
    prompts.instruction({**PROBLEMS["mbpp"], "prompt": "remove chars"}, "mbpp")


def test_completions_with_a_trained_eos_end_at_the_template_headers_only():
  fmt = prompts.Format("synthetic", "finetuned", eos_trained=True)
  assert fmt.stop == ("\n### Instruction:", "\n### Response:")
  text = "def f(x):\n    return x + 4\n\nprint(f(1))\n### Instruction:\nWrite"
  assert fmt.completion(text, PROBLEMS["synthetic"]) == "def f(x):\n    return x + 4\n\nprint(f(1))"
  fenced = "Here:\n```python\ndef f(x):\n    return x + 4\n```\nDone."
  assert fmt.completion(fenced, PROBLEMS["synthetic"]) == "def f(x):\n    return x + 4\n"


def test_completions_without_eos_end_where_the_program_ends():
  """No EOS was trained: top-level test / print / comment lines, fences and a second definition
  of the entry point end a function program; a stdin program keeps its top-level code."""
  fmt = prompts.Format("synthetic", "finetuned", eos_trained=False)
  assert set(prompts.PROGRAM_END) <= set(fmt.stop)
  problem = PROBLEMS["synthetic"]
  cases = {
      "def f(x):\n    return x + 4\n\nprint(f(1))\n": "def f(x):\n    return x + 4\n",
      "def f(x):\n    return x + 4\nassert f(1) == 5": "def f(x):\n    return x + 4",
      "def f(x):\n    return x + 4\n# tests\n": "def f(x):\n    return x + 4",
      "import math\ndef f(x):\n    return x + 4\ndef f(x):\n    return 0\n":
          "import math\ndef f(x):\n    return x + 4\n",
      "def g(v):\n    return v\n\ndef f(x):\n    return g(x) + 4\n":
          "def g(v):\n    return v\n\ndef f(x):\n    return g(x) + 4\n",
  }
  for text, want in cases.items():
    assert fmt.completion(text, problem) == want, text
  mbpp = prompts.Format("mbpp", "finetuned", eos_trained=False)
  assert mbpp.completion("def remove_Occ(s, c):\n    return s\ndef remove_Occ(s):\n    pass",
                         PROBLEMS["mbpp"]) == "def remove_Occ(s, c):\n    return s\n"
  stdin = prompts.Format("codecontests", "finetuned", eos_trained=False)
  program = "n = int(input())\nprint(n + 1)\n"
  assert stdin.completion(program + "```\nExplanation", PROBLEMS["codecontests"]) == program[:-1]
  main = program + "\nif __name__ == '__main__':\n    main()\n"
  assert stdin.completion(main, PROBLEMS["codecontests"]) == main
  assert prompts.Format("codecontests", "finetuned").completion(
      program + "\n### Response:\n", PROBLEMS["codecontests"]) == program


def test_base_and_humaneval_stops_are_the_harness_sequences():
  assert prompts.Format("humaneval", "finetuned", eos_trained=False).stop == prompts.HUMANEVAL_STOP
  assert prompts.Format("mbpp", "base").stop == prompts.MBPP_STOP
  assert prompts.Format("gsm8k", "base").completion(
      " 3 apples.\nQuestion: next", PROBLEMS["gsm8k"]) == " 3 apples."
  assert prompts.Format("mbpp", "base").completion(
      "def remove_Occ(s, c):\n    return s\nassert remove_Occ('a', 'a') == ''",
      PROBLEMS["mbpp"]) == "def remove_Occ(s, c):\n    return s"
