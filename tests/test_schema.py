"""Tests of wmtp_jax.data.schema: solution-record and problem validation."""

import pytest

from record_samples import make_record
from wmtp_jax.data.schema import DataError, validate_problem, validate_record


def test_validate_record_accepts_schema_and_extra_keys():
  validate_record(make_record(difficulty=2, source="mbpp", language="python3"))


@pytest.mark.parametrize("record, message", [
    ({k: v for k, v in make_record().items() if k != "problem_id"},
     "missing field(s) 'problem_id'"),
    (make_record(correct="true"), "'is_correct' must be bool"),
    (make_record(difficulty=True), "'difficulty' must be int"),
    (make_record(difficulty="3"), "'difficulty' must be int"),
    (make_record(output=3), "'output' must be str"),
    (make_record(output=" \n "), "empty response"),
    (["not", "an", "object"], "expected a JSON object"),
])
def test_validate_record_rejects(record, message):
  with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validate_record(record)


def test_validate_problem():
  problem = {"problem_id": "p", "prompt": "x", "source": "s", "tests": [
      {"input": "1", "output": "2"}], "test_kinds": ["public"], "time_limit_s": 2,
             "memory_limit_mb": 256, "difficulty": 7}
  validate_problem(problem)
  with pytest.raises(DataError, match="test_kinds has 2 entries for 1 tests"):
    validate_problem({**problem, "test_kinds": ["public", "private"]})
  with pytest.raises(DataError, match="unknown test kind"):
    validate_problem({**problem, "test_kinds": ["hidden"]})
  with pytest.raises(DataError, match=r"tests\[0\]"):
    validate_problem({**problem, "tests": [{"input": 1, "output": "2"}]})
  with pytest.raises(DataError, match="'time_limit_s' must be int or float"):
    validate_problem({**problem, "time_limit_s": "2s"})
