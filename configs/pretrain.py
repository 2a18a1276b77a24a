"""``pretrain``: a tiny pretrained base, MTP or LLaMA, on the synthetic pre-training corpus.

    python -m wmtp_jax.main --config=configs/pretrain.py:mtp|llama [--config.a.b=v …]

The tiny runs start from these bases (``config.init.base``): the policies from ``mtp`` (the tiny
MTP preset, all heads trained), the critic, the reference and the ``:ntp`` policy from ``llama``
(the tiny LLaMA). A job builds the base it needs once into the cache (``training.bases``), from
this config with the job's model, seed and synthetic dataset; this command trains one into its
workdir like any run. The corpus (``data.synthetic.corpus``): commented solutions (the
instruction as a comment line above the code, no prompt format) of ``corpus.n_train`` (and
``corpus.n_valid`` held-out) problems disjoint from the dataset's train/valid/test problems;
``data.dir`` empty means that corpus (in the cache). Only the ``tiny`` size exists: the 7b runs
start from converted checkpoints. The config is locked: a typo is an error. All fields:
configs/pretrain.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common

CD = ml_collections.ConfigDict
KINDS = ("mtp", "llama")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, options = common.parse_variant(arg, "pretrain", KINDS)
  if size != "tiny" or len(options) != 1:
    raise ValueError(f"configs/pretrain.py: variant {arg!r}: expected one of {KINDS} (size tiny "
                     f"only: the 7b runs start from converted checkpoints)")
  (kind,) = options
  model = common.mtp_model(size) if kind == "mtp" else common.llama_model(size)
  # Steps: the MTP base ~1.5 min, the LLaMA base ~45 s on 2 CPU cores.
  c = common.base("pretrain", size, model=model, steps=200 if kind == "mtp" else 300,
                  policy=False)
  c.variant = kind  # the run directory: runs/pretrain-<kind>
  c.model_kind = kind
  c.init.base = ""  # a base starts from random weights
  c.corpus = CD(dict(seed=0, n_train=2000, n_valid=100))
  c.train.eval_every = c.train.steps
  return c.lock()
