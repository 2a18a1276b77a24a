"""``baseline``: the MTP policy fine-tuned with uniform weights on correct solutions.

``--config=configs/baseline.py`` (tiny default: synthetic task, CPU minutes) or ``configs/baseline.py:7b``
(production settings; set ``--config.init.checkpoint`` and ``--config.data.dir``). Override any field
with ``--config.a.b=value``; the config is locked, so a typo is an error. Fields: wmtp_jax/run_config.py.
"""

from wmtp_jax.config import common as run_config


def get_config(arg: str | None = None):
  return run_config.baseline(arg)
