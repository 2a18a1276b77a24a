"""Solution records and evaluation problems: their schema and its validation.

Solution record (one JSON object per line of ``{split}.jsonl``, DESIGN §5)::

  {"instruction": str, "input": str, "output": str (non-empty), "problem_id": str,
   "is_correct": bool, "difficulty"?: int, "source"?: str,
   "critical"?: [[start, end], ...], "mutated"?: [[start, end], ...],
   "format"?: "alpaca" | "plain"}

``critical`` and ``mutated`` (``SPAN_FIELDS``) are ground-truth character spans of ``output``
(synthetic data only; defined in ``wmtp_jax.data.synthetic``): each span ``[start, end)`` holds
character (code point) offsets with ``0 <= start < end <= len(output)``; the spans are sorted and
do not overlap (an empty list is valid). ``format`` (``RECORD_FORMATS``, default ``alpaca``) says
how the data template frames the record (``wmtp_jax.data.template``): ``alpaca``, the instruction
prompt before the ``output``; ``plain``, the ``output`` alone, a document of pre-training text
(``instruction`` and ``input`` empty). Extra keys are allowed and kept.

Evaluation problem (one per line of ``{split}.problems.jsonl``)::

  {"problem_id": str, "prompt": str, "source": str,
   "entry_point"?: str, "test_code"?: str, "test_setup_code"?: str,
   "tests"?: [{"input": str, "output": str}], "test_kinds"?: ["public"|"private"|"generated"],
   "answer"?: str, "difficulty"?: int, "time_limit_s"?: float, "memory_limit_mb"?: int}

``test_code`` holds assert-style tests (Python asserts or a ``check()`` call), run after the
program; ``tests`` holds stdin/stdout pairs and ``test_kinds`` (same length) says where each came
from. Every violation is a :class:`DataError`.
"""

from collections.abc import Mapping
from typing import Any

REQUIRED_FIELDS: Mapping[str, type] = {
    "instruction": str,
    "input": str,
    "output": str,
    "problem_id": str,
    "is_correct": bool,
}
OPTIONAL_FIELDS: Mapping[str, type] = {"difficulty": int, "source": str, "critical": list,
                                        "mutated": list, "format": str}
SPAN_FIELDS = ("critical", "mutated")
RECORD_FORMATS = ("alpaca", "plain")

PROBLEM_REQUIRED_FIELDS: Mapping[str, type] = {"problem_id": str, "prompt": str, "source": str}
PROBLEM_OPTIONAL_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "entry_point": str,
    "test_code": str,
    "test_setup_code": str,
    "tests": list,
    "test_kinds": list,
    "answer": str,
    "difficulty": int,
    "time_limit_s": (int, float),
    "memory_limit_mb": int,
}
TEST_KINDS = ("public", "private", "generated")


class DataError(ValueError):
  """A malformed data file or record; the message names the file and line where known."""


def _check_type(obj: Mapping[str, Any], key: str, expected: type | tuple[type, ...]) -> None:
  value = obj[key]
  types = expected if isinstance(expected, tuple) else (expected,)
  # bool is an int subclass: only accept it where bool itself is expected.
  ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
  if not ok:
    names = " or ".join(t.__name__ for t in types)
    raise DataError(f"field {key!r} must be {names}, got {type(value).__name__} {value!r:.60}")


def check_fields(obj: Any, required: Mapping[str, Any],
                 optional: Mapping[str, Any] | None = None) -> None:
  """Raises :class:`DataError` unless ``obj`` is a dict with the ``required`` keys and every
  present key of ``required`` / ``optional`` has the given type (``bool`` is not an ``int``)."""
  if not isinstance(obj, dict):
    raise DataError(f"expected a JSON object, got {type(obj).__name__}")
  missing = [k for k in required if k not in obj]
  if missing:
    raise DataError(f"missing field(s) {', '.join(map(repr, missing))}")
  for key, expected in required.items():
    _check_type(obj, key, expected)
  for key, expected in (optional or {}).items():
    if key in obj:
      _check_type(obj, key, expected)


def _check_spans(record: Mapping[str, Any], key: str) -> None:
  """Raises :class:`DataError` (naming the record and the field) unless ``record[key]`` is a list
  of sorted, non-overlapping, non-empty spans ``[start, end]`` inside ``record["output"]``."""
  where = f"record {record['problem_id']!r}: field {key!r}"
  previous_end = 0
  for i, span in enumerate(record[key]):
    if not (isinstance(span, (list, tuple)) and len(span) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
      raise DataError(f"{where}: span {i} must be [start, end] (two ints), got {span!r:.60}")
    start, end = span
    if start > end:
      raise DataError(f"{where}: span {i} {span} is reversed (start > end)")
    if start == end:
      raise DataError(f"{where}: span {i} {span} is empty")
    if start < 0 or end > len(record["output"]):
      raise DataError(f"{where}: span {i} {span} lies outside the output "
                      f"({len(record['output'])} characters)")
    if start < previous_end:
      raise DataError(f"{where}: span {i} {span} overlaps or precedes the span before it "
                      f"(spans must be sorted and disjoint)")
    previous_end = end


def validate_record(record: Any) -> None:
  """Raises :class:`DataError` unless ``record`` is a solution record (module docstring)."""
  check_fields(record, REQUIRED_FIELDS, OPTIONAL_FIELDS)
  if not record["output"].strip():
    raise DataError("empty response: field 'output' is blank")
  for key in SPAN_FIELDS:
    if key in record:
      _check_spans(record, key)
  fmt = record.get("format", RECORD_FORMATS[0])
  if fmt not in RECORD_FORMATS:
    raise DataError(f"record {record['problem_id']!r}: field 'format' is {fmt!r}; expected one of "
                    f"{RECORD_FORMATS}")
  if fmt == "plain" and (record["instruction"] or record["input"]):
    raise DataError(f"record {record['problem_id']!r}: a 'plain' record is its output alone, but "
                    f"its 'instruction' / 'input' are not empty")


def validate_problem(problem: Any) -> None:
  """Raises :class:`DataError` unless ``problem`` is an evaluation problem (module docstring)."""
  check_fields(problem, PROBLEM_REQUIRED_FIELDS, PROBLEM_OPTIONAL_FIELDS)
  for i, test in enumerate(problem.get("tests", ())):
    if not (isinstance(test, dict) and isinstance(test.get("input"), str)
            and isinstance(test.get("output"), str)):
      raise DataError(f"tests[{i}] must be {{'input': str, 'output': str}}")
  kinds = problem.get("test_kinds")
  if kinds is not None:
    if len(kinds) != len(problem.get("tests", ())):
      n_tests = len(problem.get("tests", ()))
      raise DataError(f"test_kinds has {len(kinds)} entries for {n_tests} tests")
    bad = sorted({k for k in kinds if k not in TEST_KINDS}, key=str)
    if bad:
      raise DataError(f"unknown test kind(s) {bad}; expected one of {TEST_KINDS}")
