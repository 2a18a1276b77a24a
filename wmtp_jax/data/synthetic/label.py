"""Labelling the candidates of synthetic problems by running them against their tests in the
sandbox, many candidates per sandboxed program."""

import json
import logging
from collections.abc import Sequence

from wmtp_jax import sandbox
from wmtp_jax.data.synthetic.problems import Problem

log = logging.getLogger(__name__)

# Candidates per sandbox program (each runs in its own namespace; see ``_batch_program``).
_BATCH_SIZE = 256


def _batch_program(jobs: Sequence[tuple[str, str]]) -> str:
  """A program that runs each ``(code, test_code)`` job in a fresh namespace.

  A job passes when executing ``code`` then ``test_code`` raises nothing (``BaseException``,
  including ``SystemExit``). The program prints the verdicts as one JSON list on its last line.
  """
  return ("import json\n\n"
          "def _passes(code, tests):\n"
          "  namespace = {'__name__': '__main__'}\n"
          "  try:\n"
          "    exec(code, namespace)\n"
          "    exec(tests, namespace)\n"
          "  except BaseException:\n"
          "    return False\n"
          "  return True\n\n"
          f"_JOBS = {json.dumps(list(jobs))!r}\n"
          "print(json.dumps([_passes(c, t) for c, t in json.loads(_JOBS)]))\n")


def _run_batches(batches: Sequence[Sequence[tuple[str, str]]], workers: int | None
                 ) -> list[list[bool] | None]:
  """The verdicts of each batch, run in the sandbox; None for a batch that did not report them
  (killed, timed out, crashed the interpreter)."""
  results = sandbox.run_many([_batch_program(b) for b in batches], workers=workers)
  out = []
  for batch, result in zip(batches, results):
    lines = result.stdout.strip().splitlines() if result.passed else []
    try:
      verdicts = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
      verdicts = None
    ok = (isinstance(verdicts, list) and len(verdicts) == len(batch)
          and all(isinstance(v, bool) for v in verdicts))
    out.append(verdicts if ok else None)
  return out


def label_candidates(problems: Sequence[Problem], *, workers: int | None = None
                     ) -> list[tuple[bool, ...]]:
  """Runs every candidate of every problem against the problem's tests in the sandbox.

  Returns, per problem, one label per ``problem.candidates`` entry (True: the tests pass).
  The candidates are generator output, not model samples, so ``_BATCH_SIZE`` of them share a
  sandboxed program, each in its own namespace; the candidates of a batch that does not report
  (a candidate that kills the interpreter or hangs) are re-run one program each, and one that
  does not report then fails.
  """
  jobs = [(code, p.test_code) for p in problems for code in p.candidates]
  batches = [jobs[i:i + _BATCH_SIZE] for i in range(0, len(jobs), _BATCH_SIZE)]
  labels: list[bool | None] = []
  for batch, verdicts in zip(batches, _run_batches(batches, workers)):
    labels += verdicts or [None] * len(batch)
  retry = [i for i, label in enumerate(labels) if label is None]
  if retry:
    log.info("re-running %d candidates one program each", len(retry))
    for i, verdicts in zip(retry, _run_batches([[jobs[i]] for i in retry], workers)):
      labels[i] = bool(verdicts and verdicts[0])
  out, start = [], 0
  for p in problems:
    out.append(tuple(labels[start:start + len(p.candidates)]))
    start += len(p.candidates)
  return out
