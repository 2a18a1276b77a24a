"""``rho1``: WMTP with Rho-1 token selection against a frozen reference model.

    python -m wmtp_jax.main --config=configs/rho1.py[:SIZE[,ntp]] [--config.a.b=v …]

``tiny`` (default): synthetic task, CPU minutes. ``7b``: production settings; set
``--config.init.checkpoint`` and ``--config.data.dir``. Option ``ntp``: a plain LLaMA policy
(with n = 1 this is the original Rho-1; 7b: LLaMA-3-8B) instead of the MTP model. The config is
locked: a typo is an error.
The reference is ``configs/ref_tuning.py`` at the same size, trained first into
WORKDIR/reference unless ``--config.reference.checkpoint`` is set.
All fields: configs/rho1.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common

CD = ml_collections.ConfigDict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, options = common.parse_variant(arg, "rho1", ("ntp",))
  c = common.policy_base("rho1", size, options, steps=300 if size == "tiny" else 2000)
  reference = common.frozen_run("ref_tuning", size, options)
  c.reference = CD(dict(model=reference.model.to_dict(), checkpoint="", run=reference))
  c.rho1 = CD(dict(variant="topk", k_percent=0.6 if size == "tiny" else 0.7, mode="signed",
                   head0_always=False, percentile=40.0, alpha=1.0, normalize=True))
  # Control weights and mean-1 renormalisation (weighting.CONTROLS, weighting.RENORMALIZE).
  c.weighting = CD(dict(control="none", renormalize="none"))
  return c.lock()
