"""``verifiable``: WMTP with critic-derived token weights (trains the critic first unless config.critic.checkpoint is set).

``--config=configs/verifiable.py`` (tiny default: synthetic task, CPU minutes) or ``configs/verifiable.py:7b``
(production settings; set ``--config.init.checkpoint`` and ``--config.data.dir``). Options after the
size, comma-separated: ``:tiny,softmax_heads`` (per-position softmax over heads of TD errors) and
``:7b,shared_head`` (value head on the policy trunk instead of a critic: its stage 1, head-only
pre-training for ``shared_head.pretrain_epochs``, runs first into WORKDIR/shared_head unless
``--config.shared_head.checkpoint`` is set; stage 2 adds ``value_coef``·clipped value loss). Override any field
with ``--config.a.b=value``; the config is locked, so a typo is an error. Fields: wmtp_jax/run_config.py.
"""

from wmtp_jax.config import common as run_config


def get_config(arg: str | None = None):
  return run_config.verifiable(arg)
