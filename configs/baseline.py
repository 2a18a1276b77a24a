"""``baseline``: the MTP policy fine-tuned with uniform weights on correct solutions.

    python -m wmtp_jax.main --config=configs/baseline.py[:SIZE[,ntp]] [--config.a.b=v …]

``tiny`` (default): synthetic task, CPU minutes. ``7b``: production settings; set
``--config.init.checkpoint`` and ``--config.data.dir``. Option ``ntp``: a plain LLaMA policy
(next-token prediction; 7b: LLaMA-3-8B) instead of the MTP model (``common.policy_base``). The
config is locked: a typo is an error.
All fields: configs/baseline.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, options = common.parse_variant(arg, "baseline", ("ntp",))
  c = common.policy_base("baseline", size, options, steps=300 if size == "tiny" else 2000)
  return c.lock()
