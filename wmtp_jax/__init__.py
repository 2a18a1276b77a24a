"""wmtp_jax: Weighted Multi-Token Prediction fine-tuning of code LLMs in JAX/Flax.

Index conventions (see DESIGN.md §2): a row is ``x_0 … x_{L-1}`` = prompt + response, right
padded; ``labels[t] = x_t`` on the response and ``-100`` elsewhere; MTP logits ``[B, S, n, V]``
with head ``k`` at position ``t`` predicting ``x_{t+1+k}``.

Shape legend, used by every module. An array's name ends in its axes joined by ``x``
(``logits_BxSxnxV``), and docstrings write the same letters as ``[B, S, n, V]``:

====  ==========================================================================================
B     batch rows (a pair batch has B positive and B negative rows)
S     sequence positions of a (padded) row
n     MTP heads (``n_future_tokens``; head ``k`` predicts token ``t+1+k``); ``h`` for a subset
      of them (the heads one decoding pass unembeds)
V     vocabulary
D     model width (``dim`` / ``hidden_size``)
Q     query heads of attention
K     key/value heads of attention (GQA: ``Q`` is a multiple of ``K``)
H     width of one attention head (``head_dim``)
F     hidden width of the MLP (``ffn_hidden`` / ``intermediate_size``)
L     layers (the stacked axis of ``nn.scan`` parameters)
T     tokens of one block: the new tokens of a decoding step, or a token block of the
      blockwise cross-entropy
C     key slots of the KV cache, or a vocabulary block of the blockwise cross-entropy
M     flattened terms (any flattening of B·S·n, e.g. the rows of a gathered selection)
G     blocks of a tiled axis (the token blocks of the blockwise cross-entropy)
P     prompt positions
O, I  output / input width of a matrix in PyTorch's ``[out, in]`` layout (checkpoint conversion)
====  ==========================================================================================

Scalars are unsuffixed; per-row vectors end in ``_B``.
"""

__version__ = "0.1.0"

IGNORE_INDEX = -100
