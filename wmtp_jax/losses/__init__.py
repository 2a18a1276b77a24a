"""Losses: weighted multi-token cross-entropy (DESIGN §2) and critic / value losses (DESIGN §3).

Modules (every public name is re-exported here, e.g. ``losses.mtp_cross_entropy``):
  * ``mtp_ce``: ``mtp_cross_entropy`` from logits, ``mtp_cross_entropy_from_hidden`` without
    materialising ``[B, S, n, V]``, and their parts ``mtp_targets``, ``expand_weights``,
    ``reduce_per_head``, ``token_ce``, ``hidden_token_ce``;
  * ``blockwise_ce``: ``blockwise_token_ce``, the memory-efficient per-token CE from hidden states;
  * ``value``: ``pairwise_ranking_loss``, ``lambda_return_value_loss``, ``mc_value_loss``,
    ``clipped_value_loss``.
"""

from wmtp_jax.losses.blockwise_ce import (DEFAULT_TOKEN_BLOCK, DEFAULT_VOCAB_BLOCK,
                                          blockwise_token_ce)
from wmtp_jax.losses.mtp_ce import (expand_weights, hidden_token_ce, mtp_cross_entropy,
                                    mtp_cross_entropy_from_hidden, mtp_targets, reduce_per_head,
                                    token_ce)
from wmtp_jax.losses.value import (clipped_value_loss, lambda_return_value_loss, mc_value_loss,
                                   pairwise_ranking_loss)

__all__ = [
    "mtp_targets", "expand_weights", "reduce_per_head", "token_ce", "mtp_cross_entropy",
    "mtp_cross_entropy_from_hidden", "hidden_token_ce",
    "DEFAULT_TOKEN_BLOCK", "DEFAULT_VOCAB_BLOCK", "blockwise_token_ce",
    "pairwise_ranking_loss", "lambda_return_value_loss", "mc_value_loss", "clipped_value_loss",
]
