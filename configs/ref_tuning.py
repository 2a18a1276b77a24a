"""``ref_tuning``: next-token SFT of the Rho-1 reference model.

``--config=configs/ref_tuning.py`` (tiny default: synthetic task, CPU minutes) or ``configs/ref_tuning.py:7b``
(production settings; set ``--config.init.checkpoint`` and ``--config.data.dir``). Override any field
with ``--config.a.b=value``; the config is locked, so a typo is an error. Fields: wmtp_jax/run_config.py.
"""

from wmtp_jax.config import common as run_config


def get_config(arg: str | None = None):
  return run_config.ref_tuning(arg)
