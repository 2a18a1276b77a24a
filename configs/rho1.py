"""``rho1``: WMTP with Rho-1 token selection against a reference model (tunes the reference first unless config.reference.checkpoint is set).

``--config=configs/rho1.py`` (tiny default: synthetic task, CPU minutes) or ``configs/rho1.py:7b``
(production settings; set ``--config.init.checkpoint`` and ``--config.data.dir``). Override any field
with ``--config.a.b=value``; the config is locked, so a typo is an error. Fields: wmtp_jax/run_config.py.
"""

from wmtp_jax.config import common as run_config


def get_config(arg: str | None = None):
  return run_config.rho1(arg)
