"""``baseline``: the MTP policy fine-tuned with uniform weights on correct solutions.

    python -m wmtp_jax.main --config=configs/baseline.py[:7b] [--config.a.b=v …] [--workdir=DIR]

``tiny`` (default): synthetic task, CPU minutes. ``7b``: production settings; set
``--config.init.checkpoint`` and ``--config.data.dir``. The config is locked: a typo is an error.
All fields: configs/baseline.py and wmtp_jax/config/common.py.
"""

import ml_collections

from wmtp_jax.config import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, _ = common.parse_variant(arg, "baseline")
  c = common.base("baseline", size, model=common.mtp_model(size),
                  steps=400 if size == "tiny" else 2000, policy=True)
  return c.lock()
