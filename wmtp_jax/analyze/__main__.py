"""``python -m wmtp_jax.analyze tokens --run WORKDIR [--n 8] [--color COLOUR] [--out DIR]``

Writes the token page and its PNG (the package docstring says what they show) and prints their
paths. A bad ``--run`` / ``--data`` / ``--color`` is one line on stderr and exit status 2.
"""

import argparse
import pathlib
import sys

import numpy as np

from wmtp_jax.analyze import collect, html, plot, samples, scale as scale_lib, source as source_lib
from wmtp_jax.checkpoints import pretrained

PROG = "python -m wmtp_jax.analyze"
DEFAULT_COLOUR = {source_lib.CRITIC: "td", source_lib.REFERENCE: "excess"}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  commands = p.add_subparsers(dest="command", required=True)
  t = commands.add_parser("tokens", help="held-out samples with every token coloured")
  t.add_argument("--run", required=True,
                 help="a finished critic / ref_tuning / verifiable / rho1 run, a main job's "
                      "WORKDIR, or a converted critic / reference checkpoint (with --data)")
  t.add_argument("--n", type=int, default=8, help="problems shown (pairs where possible)")
  t.add_argument("--color", choices=sorted(scale_lib.QUANTITIES), default=None,
                 help="the coloured quantity (default: td for a critic, excess for a rho1 run, "
                      "else loss)")
  t.add_argument("--out", default=None, help="output directory (default: RUN/analysis; for a "
                                             "converted checkpoint ./analysis)")
  t.add_argument("--data", default=None, help="dataset directory (default: the run's)")
  t.add_argument("--split", default=None, help="held-out split (default: the run's valid split)")
  t.add_argument("--spans", choices=samples.SPAN_MODES, default="auto",
                 help="mark the ground-truth spans: when present, required, or never")
  t.add_argument("--head", type=int, default=0,
                 help="the MTP head whose terms per-term weights and the excess loss show")
  t.add_argument("--seed", type=int, default=0, help="which problems and incorrect solutions")
  return p


def _describe(source: source_lib.Source, quantity: str, head: int) -> str:
  """One line saying how the shown numbers were made."""
  s = source.settings
  if quantity == "weight" and source.kind == source_lib.CRITIC:
    if s.scheme != "gae_exp":
      return f"weight: softmax over heads of TD errors / {s.temperature}, head {head}'s term"
    whitening = (f"EMA mean {source.ema[0]:.4g}, std {source.ema[1]:.4g} (the run's last logged)"
                 if source.ema else "the shown samples' mean and std")
    return (f"weight = clip(exp(A_n / {s.beta}), {s.min_weight}, {s.max_weight}); A whitened "
            f"with {whitening}")
  if quantity == "weight":
    return (f"Rho-1 {s.variant} weight of head {head}'s term (k_percent {s.k_percent}, mode "
            f"{s.mode}), selected over the shown samples")
  if quantity == "excess":
    return f"excess = CE of head {head} of the policy − CE of the reference, same target"
  if source.kind == source_lib.CRITIC:
    last = ("R − V_T with the reward R" if source.rewards else "γ·V_T − V_T−1, without a reward")
    return (f"TD errors and advantages as the verifiable weighting computes them (γ {s.gamma}, "
            f"λ {s.lam}): the first token's TD error is against the value after the prompt, the "
            f"last token's is {last}")
  return "cross-entropy of the reference's next-token prediction of each token"


def tokens(args: argparse.Namespace) -> tuple[pathlib.Path, pathlib.Path]:
  """Write the page and the PNG; returns their paths."""
  source = source_lib.find(args.run, data=args.data, split=args.split)
  available = collect.available(source)
  default = DEFAULT_COLOUR[source.kind]
  quantity = args.color or (default if default in available else available[0])
  if quantity not in available:
    raise ValueError(f"--color {quantity}: {source.label} has {', '.join(available)}"
                     + ("" if source.policy or source.kind == source_lib.CRITIC else
                        " (excess and weight need the policy of a rho1 run)"))
  tokenizer = pretrained.load_tokenizer(source.model)
  pairs = samples.held_out(source.dataset, source.split, tokenizer, args.n, source.max_len,
                           seed=args.seed, spans=args.spans, add_eos=source.add_eos)
  shown = [s for pair in pairs for s in pair if s is not None]
  values = iter(collect.collect(source, shown, head=args.head))
  rows = [(pair, tuple(None if s is None else next(values) for s in pair)) for pair in pairs]
  scale = scale_lib.fit(quantity, np.concatenate(
      [v[quantity] for _, pair_values in rows for v in pair_values if v is not None]))
  meta = [source.label + ("" if str(source.model) in source.label else f"; model {source.model}")
          + (f"; policy {source.policy}" if source.policy else ""),
          f"held-out split {source.split!r} of {source.dataset}; {len(pairs)} problems",
          _describe(source, quantity, args.head),
          f"colours: {scale_lib.RANGE_NOTE}; hover a token for its numbers "
          f"({', '.join(available)})"]
  checkpoint = (pathlib.Path(args.run) / pretrained.CONFIG_FILE).is_file()
  out = pathlib.Path(args.out or ("analysis" if checkpoint else
                                  pathlib.Path(args.run) / "analysis"))
  out.mkdir(parents=True, exist_ok=True)
  page_path, png_path = out / f"tokens-{quantity}.html", out / f"tokens-{quantity}.png"
  page_path.write_text(html.page(rows, scale, meta=meta), encoding="utf-8")
  plot.summary(rows, scale, png_path, kind=source.kind, title=f"{scale.title} — {source.label}")
  return page_path, png_path


def main(argv: list[str] | None = None) -> int:
  args = parser().parse_args(argv)
  try:
    paths = tokens(args)
  except (ValueError, FileNotFoundError) as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return 2
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
