"""wmtp_jax: Weighted Multi-Token Prediction fine-tuning of code LLMs in JAX/Flax.

Index conventions (see DESIGN.md §2): a row is ``x_0 … x_{L-1}`` = prompt + response, right
padded; ``labels[t] = x_t`` on the response and ``-100`` elsewhere; MTP logits ``[B, S, n, V]``
with head ``k`` at position ``t`` predicting ``x_{t+1+k}``.
"""

__version__ = "0.1.0"

IGNORE_INDEX = -100
