"""The token page: one self-contained HTML document (inline CSS; no script, nothing fetched).

Every response token of a sample is one ``<span class="t">`` inside the sample's
``<pre class="code">``, in order; its background is the colour of the shown quantity, its tooltip
(``title``) every quantity's number. The characters no token covers are plain text between the
spans, so the ``<pre>``'s text is the solution exactly (the closing EOS adds ``</s>``; what
truncation cut is the last ``<span class="tail">``, greyed, not a token). Token classes:
``crit`` (a critical-span token, underlined), ``mut`` (a mutated-span token, boxed), ``drop``
(the critic's largest value drop, i.e. most negative TD error, of the sample), ``eos``, ``nl``
(a token holding a line break, drawn with a ↵ before it), ``empty`` (no characters of its own).
The marks drawn before a token (▼ of ``drop``, ↵, ·) are CSS, not text.
"""

import html
from collections.abc import Mapping, Sequence

import numpy as np

from wmtp_jax.analyze.samples import Pair, Sample
from wmtp_jax.analyze.scale import Scale

EOS_TEXT = "</s>"
SPAN_CLASSES = {"critical": "crit", "mutated": "mut"}
TICKS = 5
CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 18px 24px; color: #222; background: #f6f6f6; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 15px; margin: 0 0 4px; }
.meta { color: #555; margin: 2px 0; }
.legend { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; margin: 12px 0 18px;
          padding: 10px 14px; background: #fff; border: 1px solid #ddd; border-radius: 6px; }
.bar { width: 420px; height: 16px; border: 1px solid #999; }
.ticks { position: relative; width: 420px; height: 18px; font-size: 12px; }
.ticks span { position: absolute; transform: translateX(-50%); white-space: nowrap; }
.marks .t { margin-right: 14px; padding: 0 3px; }
.pair { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px;
        margin-bottom: 14px; }
.instr { margin: 0 0 8px; color: #333; }
.cols { display: grid; grid-template-columns: 1fr 1fr; grid-template-rows: auto auto;
        grid-auto-flow: column; column-gap: 14px; row-gap: 4px; }
.side { display: contents; }
.cols > .side > * { min-width: 0; }
.head { font-size: 13px; color: #444; align-self: end; }
.badge { font-weight: 600; padding: 1px 6px; border-radius: 3px; color: #fff; }
.ok { background: #2e7d32; } .bad { background: #c62828; }
.none { color: #888; font-style: italic; }
pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; tab-size: 4; }
pre.code { font: 13px/1.7 ui-monospace, Menlo, Consolas, monospace; padding: 8px;
           background: #fff; border: 1px solid #ccc; border-radius: 4px; }
pre.input { font-size: 12px; color: #555; margin-bottom: 8px; }
.t { border-radius: 2px; }
.t.crit { border-bottom: 3px solid #111; }
.t.mut { outline: 2px solid #a000ff; outline-offset: -1px; }
.t.drop::before { content: "\\25BC"; color: #a000ff; font-size: 11px; vertical-align: super;
                  text-shadow: 0 0 2px #fff, 0 0 2px #fff; }
.t.eos { font-size: 10px; padding: 0 2px; }
.t.empty::before { content: "\\00B7"; color: #888; }
.tail { color: #999; background: repeating-linear-gradient(135deg, #fff 0 6px, #eee 6px 12px); }
.tail::before { content: "[not scored: past the run's max_len] "; font-style: italic; }
.t.nl::before { content: "\\21B5"; color: #999; font-size: 11px; }
.t.nl.drop::before { content: "\\25BC\\21B5"; color: #a000ff; }
"""


def _e(text: str) -> str:
  return html.escape(text, quote=True)


def _name(sample: Sample, i: int) -> str:
  """How token ``i`` is named in text: ``EOS`` or its characters' ``repr``."""
  return "EOS" if sample.is_eos(i) else repr(sample.pieces[i])


def _title(sample: Sample, i: int, values: Mapping[str, np.ndarray]) -> str:
  piece = _name(sample, i)
  marks = [field for field, mask in sample.spans.items() if mask[i]]
  numbers = ", ".join(f"{k} {float(v[i]):.4g}" for k, v in values.items())
  return f"#{i} {piece}: {numbers}" + (f" [{', '.join(marks)}]" if marks else "")


def _drop(sample: Sample, values: Mapping[str, np.ndarray]) -> int | None:
  """An incorrect sample's token of the most negative TD error (a critic's largest value drop);
  None for a correct sample or without TD errors."""
  if sample.record["is_correct"] or "td" not in values:
    return None
  return int(np.argmin(values["td"]))


def _code(sample: Sample, values: Mapping[str, np.ndarray], scale: Scale) -> str:
  """The sample's ``<pre class="code">`` (module docstring)."""
  shown = values[scale.quantity]
  drop = _drop(sample, values)
  parts = []
  for i, (gap, piece) in enumerate(zip(sample.gaps, sample.pieces)):
    eos = sample.is_eos(i)
    classes = ["t", *(cls for field, cls in SPAN_CLASSES.items()
                      if field in sample.spans and sample.spans[field][i])]
    classes += [cls for cls, on in (("drop", i == drop), ("eos", eos), ("nl", "\n" in piece),
                                    ("empty", not piece and not eos)) if on]
    x = float(shown[i])
    style = f"background:{scale.hex(x)};color:{scale.text_colour(x)}"
    parts.append(f'{_e(gap)}<span class="{" ".join(classes)}" style="{style}" '
                 f'title="{_e(_title(sample, i, values))}">{_e(EOS_TEXT if eos else piece)}</span>')
  tail = f'<span class="tail">{_e(sample.tail)}</span>' if sample.tail else ""
  return f'<pre class="code">{"".join(parts)}{tail}</pre>'


def _summary(sample: Sample, values: Mapping[str, np.ndarray], quantity: str) -> str:
  shown = values[quantity]
  parts = [f"{sample.n_tokens} tokens", f"mean {quantity} {shown.mean():.3g}"]
  for field, mask in sample.spans.items():
    if mask.any():
      parts.append(f"on {field} {shown[mask].mean():.3g}")
  drop = _drop(sample, values)
  if drop is not None:
    where = ""
    if "mutated" in sample.spans:
      where = (" (inside the mutated span)" if sample.spans["mutated"][drop] else
               " (outside the mutated span)")
    parts.append(f"largest value drop: token #{drop} {_name(sample, drop)}{where}")
  if sample.tail:
    parts.append(f"truncated: {len(sample.tail)} characters past max_len not scored")
  return " · ".join(parts)


def _side(sample: Sample | None, values, scale: Scale, correct: bool) -> str:
  label = "correct" if correct else "incorrect"
  if sample is None:  # two cells, as a sample's: the grid keeps the columns' rows aligned
    return (f'<div class="side"><div class="head none">no {label} solution of this problem in '
            f'the split</div><div></div></div>')
  badge = f'<span class="badge {"ok" if correct else "bad"}">{label}</span>'
  return (f'<div class="side"><div class="head">{badge} '
          f'{_e(_summary(sample, values, scale.quantity))}</div>{_code(sample, values, scale)}'
          f'</div>')


def _legend(scale: Scale, marks: bool, drops: bool) -> str:
  gradient = ", ".join(f"{scale.hex(v)} {100 * p:.0f}%" for p, v in scale.stops())
  ticks = "".join(f'<span style="left:{100 * p:.0f}%">{v:.3g}</span>'
                  for p, v in scale.stops(TICKS))
  bar = (f'<div><b>{_e(scale.title)}</b><div class="bar" style="background:linear-gradient('
         f'to right, {gradient})"></div><div class="ticks">{ticks}</div></div>')
  key = ('<span class="t crit">critical span</span><span class="t mut">mutated span</span>'
         if marks else "")
  key += '<span class="t drop">largest value drop (incorrect)</span>' if drops else ""
  return f'<div class="legend">{bar}<div class="marks"><b>marks</b><br>{key}</div></div>'


def page(rows: Sequence[tuple[Pair, tuple]], scale: Scale, *, meta: Sequence[str]) -> str:
  """The whole document. ``rows``: ``((correct, incorrect), (their values, …))`` per problem,
  values ``{quantity: [N]}`` per sample (None beside a missing sample); ``meta``: lines under
  the title (escaped here)."""
  marks = any(s.spans for pair, _ in rows for s in pair if s is not None)
  drops = any("td" in v for _, values in rows for v in values if v is not None)
  sections = []
  for number, ((pos, neg), (pos_values, neg_values)) in enumerate(rows, 1):
    record = (pos or neg).record
    extra = f'<pre class="input">{_e(record["input"])}</pre>' if record.get("input") else ""
    sections.append(
        f'<section class="pair"><h2>{number}. {_e(record["problem_id"])}</h2>'
        f'<p class="instr">{_e(record["instruction"])}</p>{extra}<div class="cols">'
        f'{_side(pos, pos_values, scale, True)}{_side(neg, neg_values, scale, False)}'
        f'</div></section>')
  lines = "".join(f'<p class="meta">{_e(line)}</p>' for line in meta)
  return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
          f'<title>Token analysis: {_e(scale.quantity)}</title><style>{CSS}</style></head>'
          f'<body><h1>Token analysis: {_e(scale.title)}</h1>{lines}{_legend(scale, marks, drops)}'
          f'{"".join(sections)}</body></html>\n')
