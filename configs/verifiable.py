"""``verifiable``: WMTP with critic-derived token weights (trains the critic first unless config.critic.checkpoint is set).

``--config=configs/verifiable.py`` (tiny default: synthetic task, CPU minutes) or ``configs/verifiable.py:7b``
(production settings; set ``--config.init.checkpoint`` and ``--config.data.dir``). Override any field
with ``--config.a.b=value``; the config is locked, so a typo is an error. Fields: wmtp_jax/run_config.py.
"""

from wmtp_jax import run_config


def get_config(arg: str | None = None):
  return run_config.verifiable(arg)
