"""Tests of wmtp_jax.data.schema: solution-record and problem validation."""

import re

import pytest

from record_samples import make_record
from wmtp_jax.data import jsonl
from wmtp_jax.data.schema import DataError, validate_problem, validate_record


def test_validate_record_accepts_schema_and_extra_keys():
  validate_record(make_record(difficulty=2, source="mbpp", language="python3"))
  validate_record(make_record(format="alpaca"))
  validate_record(make_record(format="plain", instruction="", input=""))


@pytest.mark.parametrize("record, message", [
    ({k: v for k, v in make_record().items() if k != "problem_id"},
     "missing field(s) 'problem_id'"),
    (make_record(correct="true"), "'is_correct' must be bool"),
    (make_record(difficulty=True), "'difficulty' must be int"),
    (make_record(difficulty="3"), "'difficulty' must be int"),
    (make_record(output=3), "'output' must be str"),
    (make_record(output=" \n "), "empty response"),
    (make_record(critical="[[0, 1]]"), "'critical' must be list"),
    (make_record(mutated=None), "'mutated' must be list"),
    (["not", "an", "object"], "expected a JSON object"),
    (make_record(format="markdown"), "field 'format' is 'markdown'; expected one of"),
    (make_record(format="plain"), "a 'plain' record is its output alone"),
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


def test_validate_record_accepts_spans():
  output = "def f(x):\n    return x + 2\n"
  validate_record(make_record(output=output, critical=[[23, 24], [25, 26]], mutated=[]))
  validate_record(make_record(output=output, critical=[[0, len(output)]], mutated=[[25, 26]]))


@pytest.mark.parametrize("spans, message", [
    ([[5, 2]], "span 0 [5, 2] is reversed"),
    ([[3, 3]], "span 0 [3, 3] is empty"),
    ([[0, 2], [20, 99]], "span 1 [20, 99] lies outside the output (27 characters)"),
    ([[-1, 2]], "span 0 [-1, 2] lies outside the output"),
    ([[4, 8], [6, 9]], "span 1 [6, 9] overlaps or precedes the span before it"),
    ([[6, 9], [0, 2]], "span 1 [0, 2] overlaps or precedes the span before it"),
    ([[1, 2, 3]], "span 0 must be [start, end]"),
    ([[1, 2.0]], "span 0 must be [start, end]"),
    ([[True, 2]], "span 0 must be [start, end]"),
    ([3], "span 0 must be [start, end]"),
])
@pytest.mark.parametrize("field", ["critical", "mutated"])
def test_validate_record_rejects_bad_spans(field, spans, message):
  record = make_record(pid="synthetic/train/00007", output="def f(x):\n    return x + 2\n",
                       **{field: spans})
  with pytest.raises(DataError, match=re.escape(
      f"record 'synthetic/train/00007': field {field!r}: {message}")):
    validate_record(record)


def test_bad_spans_are_located_in_the_file(tmp_path):
  path = tmp_path / "train.jsonl"
  good = make_record(output="x = 1\n", critical=[[4, 5]])
  path.write_text(jsonl.jsonl_line(good) + jsonl.jsonl_line({**good, "critical": [[4, 9]]}))
  with pytest.raises(DataError, match=re.escape(
      f"{path}:2: record 'p1': field 'critical': span 0 [4, 9] lies outside the output")):
    list(jsonl.read_jsonl(path))
