r'''How a benchmark problem becomes the model's prompt, where generation stops, and which part of
a completion is scored (DESIGN §6; the reference's protocol, issue 15 item 6).

Two prompt modes, one per kind of model (``PROMPT_MODES``):

* ``finetuned``, a model fine-tuned on the training template: the Alpaca prompt
  (``template.format_prompt``) of the instruction, as the reference does: MBPP's text followed
  by ``"\n\nThe function should be named '{name}'."`` (the name called by the first test),
  CodeContests' description after ``CODECONTESTS_INSTRUCTION`` and a blank line, GSM8K's
  question, the synthetic task's instruction. HumanEval keeps its raw signature + docstring,
  which the completion continues (the reference does the same in both modes).
* ``base``, a pretrained model that never saw the template: the raw harness prompt. HumanEval's
  prompt; MBPP's ``"""\n{text}\n{test_list[0]}\n"""\n`` (the problem's stored ``prompt``); the
  same docstring form around the synthetic instruction and around CodeContests' instruction +
  description; ``"Question: {question}\nAnswer:"`` for GSM8K.

The completion is the whole program, except for HumanEval (``continues_prompt``: scored as
``prompt + completion``). A fenced ```` ```python ```` block in an Alpaca answer is taken as the
program.

Stopping. A row ends at EOS, at ``max_new_tokens`` or at the first of its stop sequences
(``Format.stop``; checked during decoding, then cut by ``Format.completion``): HumanEval's and
MBPP's harness sequences; the Alpaca headers (``### Instruction:`` / ``### Response:``) for the
template. A model trained without EOS (``data.train_eos = False``, the reference's recipe) never
emits one, so for it the Alpaca prompt also stops where a program ends: at top-level test, print,
``__main__``, comment or docstring lines and code fences (``PROGRAM_END``; for function problems;
stdin programs legitimately run top-level code, so they end at a fence only), and a second
top-level ``def`` of the entry point (the program started over) is cut off.
'''

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from wmtp_jax.data import template

PROMPT_MODES = ("finetuned", "base")
CODECONTESTS_INSTRUCTION = "Write a Python solution that reads from stdin and prints to stdout."
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
ALPACA_STOP = ("\n### Instruction:", "\n### Response:")
PROGRAM_END = ("\nassert", "\nprint(", "\nif __name__", "\n#", '\n"""', "\n'''", "\n```")
_DOCSTRING = '"""\n{}\n"""\n'
_MBPP_FIRST_CALL = re.compile(r"assert\s+(\w+)\s*\(")
_FENCE = re.compile(r"```[ \t]*(?:[A-Za-z0-9_+-]+)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def check_mode(mode: str, where: str = "prompt mode") -> None:
  """``mode`` is one of ``PROMPT_MODES``, else an error naming ``where`` (a config key)."""
  if mode not in PROMPT_MODES:
    raise ValueError(f"{where}={mode!r}: expected one of {PROMPT_MODES}")


def benchmark_of(problems: Sequence[Mapping[str, Any]]) -> str:
  """The benchmark of ``problems`` from their ``source`` (``mbpp-sanitized`` is MBPP); all must
  share it."""
  names = {str(p["source"]).removesuffix("-sanitized") for p in problems}
  if len(names) != 1:
    raise ValueError(f"problems from several sources {sorted(names)}: evaluate them separately")
  return names.pop()


def mbpp_text_and_name(problem: Mapping[str, Any]) -> tuple[str, str | None]:
  """MBPP's task text (from the stored harness prompt) and the function name its first test
  calls (None if no test calls one)."""
  prompt = problem["prompt"]
  if not (prompt.startswith('"""\n') and prompt.endswith('\n"""\n')):
    raise ValueError(f"problem {problem['problem_id']!r}: an MBPP prompt is the harness docstring "
                     f"'\"\"\"\\n{{text}}\\n{{first test}}\\n\"\"\"\\n', got {prompt[:40]!r}")
  body = prompt[4:-5]
  cut = body.rfind("\nassert")
  match = _MBPP_FIRST_CALL.search(problem.get("test_code", ""))
  return (body[:cut] if cut >= 0 else body), (match.group(1) if match else None)


def entry_point(problem: Mapping[str, Any], benchmark: str) -> str | None:
  """The function a program must define, when the problem names one."""
  if benchmark == "mbpp":
    return mbpp_text_and_name(problem)[1]
  return problem.get("entry_point")


def instruction(problem: Mapping[str, Any], benchmark: str) -> str:
  """The task as the ``finetuned`` mode states it (module docstring)."""
  if benchmark == "mbpp":
    text, name = mbpp_text_and_name(problem)
    return f"{text}\n\nThe function should be named '{name}'." if name else text
  if benchmark == "codecontests":
    return f"{CODECONTESTS_INSTRUCTION}\n\n{problem['prompt']}"
  return problem["prompt"]


def extract_code(text: str) -> str:
  """The first fenced code block of ``text`` if there is one, else ``text``."""
  match = _FENCE.search(text)
  return match.group(1) if match else text


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
  """``text`` up to (excluding) the earliest occurrence of any stop sequence."""
  cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
  return text[:cut]


def cut_second_definition(text: str, name: str) -> str:
  """``text`` up to a second top-level ``def name(`` (the program started over)."""
  starts = [m.start() for m in re.finditer(rf"(?m)^def {re.escape(name)}\s*\(", text)]
  return text[:starts[1]] if len(starts) > 1 else text


@dataclasses.dataclass(frozen=True)
class Format:
  """How one benchmark's problems are prompted and read in one mode.

  Attributes:
    benchmark: ``synthetic`` | ``humaneval`` | ``mbpp`` | ``codecontests`` | ``gsm8k``.
    mode: ``finetuned`` | ``base``.
    eos_trained: whether the model learned to emit EOS (``data.train_eos``); without it the
      Alpaca prompt also stops where a program ends (module docstring).
  """
  benchmark: str
  mode: str = "finetuned"
  eos_trained: bool = True

  def __post_init__(self):
    check_mode(self.mode)

  @property
  def alpaca(self) -> bool:
    return self.mode == "finetuned" and self.benchmark != "humaneval"

  @property
  def continues_prompt(self) -> bool:
    return self.benchmark == "humaneval"

  def prompt(self, problem: Mapping[str, Any]) -> str:
    """The text the model continues."""
    if self.benchmark == "humaneval":
      return problem["prompt"]
    if self.alpaca:
      return template.format_prompt({"instruction": instruction(problem, self.benchmark),
                                     "input": ""})
    if self.benchmark == "mbpp":
      return problem["prompt"]
    if self.benchmark == "gsm8k":
      return f"Question: {problem['prompt']}\nAnswer:"
    return _DOCSTRING.format(instruction(problem, self.benchmark))

  @property
  def stop(self) -> tuple[str, ...]:
    """Stop sequences of generation (module docstring)."""
    if self.benchmark == "humaneval":
      return HUMANEVAL_STOP
    if self.alpaca:
      if self.eos_trained or self.benchmark == "gsm8k":
        return ALPACA_STOP
      return ALPACA_STOP + (("\n```",) if self.benchmark == "codecontests" else PROGRAM_END)
    if self.benchmark == "gsm8k":
      return ("\nQuestion:",)
    if self.benchmark == "codecontests":
      return ('\n"""', "\n```")
    return MBPP_STOP

  def completion(self, text: str, problem: Mapping[str, Any]) -> str:
    """The scored part of a generated continuation ``text``."""
    text = truncate_at_stop(text, self.stop)
    if self.alpaca and "```" in text:
      text = extract_code(text)
    name = entry_point(problem, self.benchmark)
    if self.alpaca and not self.eos_trained and name:
      text = cut_second_definition(text, name)
    return text
