"""``ref_tuning``: next-token SFT of the Rho-1 reference model (a LLaMA).

    python -m wmtp_jax.main --config=configs/ref_tuning.py[:7b] [--config.a.b=v …] [--workdir=DIR]

``tiny`` (default): synthetic task, CPU minutes. ``7b``: production settings (Sheared-LLaMA-2.7B);
set ``--config.init.checkpoint`` and ``--config.data.dir``. The config is locked: a typo is an
error. ``configs/rho1.py`` runs this config first unless given a reference checkpoint.
All fields: configs/ref_tuning.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(arg, "ref_tuning")
  c = common.base("ref_tuning", size, model=common.llama_model(size),
                  steps=200 if size == "tiny" else 1000, policy=False)
  if size == "7b":  # the reference's training set for its reference model (cap 50 per problem)
    c.data.update(common.reference_sampling("unique_correct", n_samples=200000,
                                            max_pairs_per_problem=50))
  return c.lock()
