"""python -m wmtp_jax.analyze tokens: the page and the PNG written, bad input as one line and
exit status 2."""

import re

import pytest

from test_analyze_collect import make_run
from wmtp_jax.analyze import __main__ as cli


@pytest.fixture(scope="module")
def critic_run(small_dataset, tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("cli"), "critic", small_dataset)


def test_writes_the_page_and_the_png(critic_run, tmp_path, capsys):
  assert cli.main(["tokens", "--run", str(critic_run), "--n", "2", "--color", "advantage",
                   "--out", str(tmp_path)]) == 0
  page, png = tmp_path / "tokens-advantage.html", tmp_path / "tokens-advantage.png"
  assert capsys.readouterr().out.split() == [str(page), str(png)]
  text = page.read_text()
  assert text.count('<section class="pair">') == 2 and text.count('<pre class="code">') == 4
  assert "GAE advantage" in text and "critic run" in text
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, message", [
    (["--color", "excess"], "--color excess: critic run .* has value, td, advantage, weight"),
    (["--head", "1"], "--head 1: the run's policy has 1 head"),
    (["--split", "nope"], "has no split 'nope'"),
])
def test_bad_input_is_one_line(critic_run, tmp_path, capsys, args, message):
  assert cli.main(["tokens", "--run", str(critic_run), "--n", "1", "--out", str(tmp_path),
                   *args]) == 2
  err = capsys.readouterr().err
  assert err.startswith("python -m wmtp_jax.analyze: error: ") and len(err.splitlines()) == 1
  assert re.search(message, err), err
