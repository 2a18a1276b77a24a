"""analyze.html: every token exactly once and in order, code escaped with its whitespace kept,
spans marked on the right tokens (checked against the records' character spans), nothing
fetched."""

from html import escape
from html.parser import HTMLParser
import re

import numpy as np
import pytest

from wmtp_jax.analyze import html, samples, scale as scale_lib
from wmtp_jax.data import tokenizer as tokenizer_lib

CODE = ('def f(s):\n\tif s < "a&b" and \'x\' > s:\n        return "<b>&amp;</b>"\n'
        '    return s  # it\'s & "done"\n')


class _Blocks(HTMLParser):
  """Per ``<pre class="code">``: its token spans (classes, title, text) and its whole text."""

  def __init__(self, page: str):
    super().__init__(convert_charrefs=True)
    self.blocks, self._pre, self._span = [], False, None
    self.feed(page)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "pre" and attrs.get("class") == "code":
      self._pre = True
      self.blocks.append({"tokens": [], "text": ""})
    elif tag == "span" and self._pre and "t" in attrs["class"].split():
      self._span = {"classes": attrs["class"].split(), "title": attrs["title"], "text": ""}

  def handle_endtag(self, tag):
    if tag == "span" and self._span is not None:
      self.blocks[-1]["tokens"].append(self._span)
      self._span = None
    elif tag == "pre":
      self._pre = False

  def handle_data(self, data):
    if self._pre:
      self.blocks[-1]["text"] += data
      if self._span is not None:
        self._span["text"] += data


@pytest.fixture(scope="module")
def tokenizer(small_dataset):
  return tokenizer_lib.load_tokenizer(small_dataset / "tokenizer")


def _values(sample, seed=0):
  rng = np.random.default_rng(seed)
  return {"value": rng.uniform(size=sample.n_tokens).astype(np.float32),
          "td": rng.normal(size=sample.n_tokens).astype(np.float32)}


def _page(rows, quantity="td"):
  shown = np.concatenate([v[quantity] for _, vs in rows for v in vs if v is not None])
  return html.page(rows, scale_lib.fit(quantity, shown), meta=["<meta> & \"line\""])


def test_every_token_once_in_order_and_code_escaped(tokenizer):
  record = {"instruction": "Use <script>alert(1)</script> & co", "input": "", "output": CODE,
            "problem_id": "x/<1>", "is_correct": True}
  sample = samples.encode(record, tokenizer, 256, spans="off", where="test")
  values = _values(sample)
  page = _page([((sample, None), (values, None))])
  [block] = _Blocks(page).blocks
  assert [t["text"] for t in block["tokens"]] == [*sample.pieces[:-1], html.EOS_TEXT]
  assert block["text"] == CODE + html.EOS_TEXT       # newlines, tabs, indentation kept
  assert "eos" in block["tokens"][-1]["classes"]
  assert block["tokens"][0]["title"] == (f"#0 {sample.pieces[0]!r}: value "
                                         f"{values['value'][0]:.4g}, td {values['td'][0]:.4g}")
  assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
  [raw] = re.findall(r'<pre class="code">(.*?)</pre>', page, flags=re.S)
  assert re.sub(r"</?span[^>]*>", "", raw) == escape(CODE + html.EOS_TEXT)   # no raw < & " '
  assert "&lt;meta&gt; &amp; &quot;line&quot;" in page and "x/&lt;1&gt;" in page
  assert "no incorrect solution of this problem" in page
  assert not any(s in page for s in ("http://", "https://", "src=", "@import", "url("))


def _overlaps(start, end, spans):
  return any(s < end and start < e for s, e in spans)


def test_spans_marked_on_the_tokens_that_overlap_them(small_dataset, tokenizer):
  pairs = samples.held_out(small_dataset, "valid", tokenizer, 3, 160)
  rows = [(pair, tuple(_values(s, i) for s in pair)) for i, pair in enumerate(pairs)]
  blocks = _Blocks(_page(rows)).blocks
  shown = [(s, v) for pair, vs in rows for s, v in zip(pair, vs)]
  assert len(blocks) == len(shown) == 6
  marked = {"crit": 0, "mut": 0}
  for block, (sample, values) in zip(blocks, shown):
    record, position = sample.record, 0
    assert block["text"] == record["output"] + html.EOS_TEXT
    for i, token in enumerate(block["tokens"][:-1]):       # the EOS has no characters
      start = position + len(sample.gaps[i])
      position = start + len(token["text"])
      for cls, field in (("crit", "critical"), ("mut", "mutated")):
        assert (cls in token["classes"]) == _overlaps(start, position, record[field]), (i, cls)
        marked[cls] += cls in token["classes"]
    drops = [i for i, t in enumerate(block["tokens"]) if "drop" in t["classes"]]
    assert drops == ([] if record["is_correct"] else [int(np.argmin(values["td"]))])
  assert marked["crit"] and marked["mut"]


def test_no_drop_mark_without_td_errors(tokenizer, small_dataset):
  pairs = samples.held_out(small_dataset, "valid", tokenizer, 1, 160)
  rows = [(pairs[0], tuple({"loss": np.ones(s.n_tokens, np.float32)} for s in pairs[0]))]
  page = _page(rows, "loss")
  assert not any("drop" in t["classes"] for b in _Blocks(page).blocks for t in b["tokens"])
  assert "largest value drop" not in page
