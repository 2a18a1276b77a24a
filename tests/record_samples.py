"""Solution records shared by the tests of wmtp_jax.data.schema, .jsonl and .records."""


def make_record(pid="p1", correct=True, output="print(1)\n", **extra):
  return {"instruction": "Do it.", "input": "", "output": output, "problem_id": pid,
          "is_correct": correct, **extra}


def sample_records():
  """Records of three problems, interleaved, with non-ASCII text and a U+2028 separator."""
  return [
      make_record("a", True, "x = 'é'\n", difficulty=3, source="t"),
      make_record("b", False, "y = 2\u2028z = 3\n", difficulty=7),
      make_record("a", False, "x = 1\n", difficulty=3),
      make_record("c", True, "pass\n"),
      make_record("a", True, "x = 'ü' * 2\n" * 5, difficulty=3),
      make_record("b", True, "日本語 = 1\n", difficulty=7),
  ]
