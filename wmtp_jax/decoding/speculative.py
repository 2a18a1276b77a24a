"""Self-speculative decoding with the MTP heads (Gloeckle et al. 2024; Stern et al. 2018).

Heads ``1 … k`` draft the ``k`` tokens after the newest one, head 0 verifies them in **one** forward
pass, and the longest agreeing prefix is accepted, plus one token from head 0 itself:

    input   last  d_1  d_2 … d_k          (cache slots s … s + k; every block that runs writes its
    head 0  g_0   g_1  g_2 … g_k           keys/values there: the trunk and heads 0 … k)
    accept  d_j while d_j == g_{j−1}; with a accepted, emit g_0 … g_a (= d_1 … d_a, g_a)
    next    last = g_a at slot s + a + 1; drafts = heads 1 … k at position a

Slots ``s + a + 1 … s + k`` then hold the keys/values of rejected drafts; the next pass writes its
``k + 1`` tokens from slot ``s + a + 1`` on, over them, and causal masking by slot keeps them from
ever being read before that, so the cache of every head stays consistent. Greedy output is
token-for-token that of plain greedy decoding with head 0 (up to floating-point ties).

With sampling (temperature / top-p) drafts are sampled from the draft heads' warped distributions
``q`` and verified with speculative sampling (Leviathan et al. 2023; Chen et al. 2023): accept
``d_j`` with probability ``min(1, p_{j−1}(d_j) / q_j(d_j))``, on the first rejection sample from
``norm(max(0, p − q))``, after ``k`` acceptances sample the extra token from ``p_k``; the output is
distributed as plain sampling from head 0.

Cost per pass: the trunk and ``k + 1`` head blocks on ``k + 1`` tokens, the unembedding of head 0
at the ``k + 1`` positions and of the ``k`` draft heads at the accepted one, for ``1 … k + 1``
tokens (``mean_accepted_length`` in ``Generation.stats``); ``wmtp_jax.bench.decode`` measures it.
"""

import jax
import jax.numpy as jnp

from wmtp_jax.decoding.adapter import ModelAdapter
from wmtp_jax.decoding.sampling import Knobs, Sampling, sample_from, warp_probs
from wmtp_jax.decoding.state import DecodeSpec, append_tokens


def draft(sampling: Sampling | Knobs, draft_logits_BxhxV, rng) -> dict:
  """``drafts [B, k]`` from the draft heads' logits (and ``draft_probs`` when sampling)."""
  if sampling.greedy:
    return {"drafts": jnp.argmax(draft_logits_BxhxV, -1).astype(jnp.int32)}
  probs = warp_probs(draft_logits_BxhxV, sampling)
  return {"drafts": sample_from(rng, probs), "draft_probs": probs}


def _at(x, index_B):
  """``x[b, index[b]]`` of ``x [B, T, ...]``: ``[B, ...]``."""
  index = index_B.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.take_along_axis(x, index, axis=1)[:, 0]


def step(adapter: ModelAdapter, spec: DecodeSpec, params, state):
  """One verify-and-draft pass for every active row (the ``lax.while_loop`` body)."""
  k = spec.draft_heads
  batch = state["last"].shape[0]
  active_B = ~state["done"]
  slot_B = state["lengths"] + state["n_gen"] - 1
  tokens_BxT = jnp.concatenate([state["last"][:, None], state["drafts"]], axis=1)
  # Every head block runs on all k + 1 tokens (its cache must hold them), but only head 0 needs
  # logits at every position; the draft heads are unembedded at the accepted position only.
  hidden_BxTxhxD, cache = adapter.forward(params, state["cache"], tokens_BxT, slot_B,
                                          heads=k + 1, return_hidden=True)
  head0_BxTxV = adapter.unembed(params, hidden_BxTxhxD[:, :, 0])
  rng, accept_rng, fix_rng, draft_rng = jax.random.split(state["rng"], 4)
  drafts_Bxh = state["drafts"]
  knobs = spec.knobs(state)
  if spec.greedy:
    verified_BxT = jnp.argmax(head0_BxTxV, -1).astype(jnp.int32)
    agree_Bxh = drafts_Bxh == verified_BxT[:, :k]
    accepted_B = jnp.sum(jnp.cumprod(agree_Bxh, axis=1), axis=1).astype(jnp.int32)
    new_BxT = verified_BxT  # g_t == d_{t+1} for t < a
  else:
    p_BxTxV = warp_probs(head0_BxTxV, knobs)
    q_BxhxV = state["draft_probs"]
    p_draft_Bxh = jnp.take_along_axis(p_BxTxV[:, :k], drafts_Bxh[..., None], -1)[..., 0]
    q_draft_Bxh = jnp.take_along_axis(q_BxhxV, drafts_Bxh[..., None], -1)[..., 0]
    u_Bxh = jax.random.uniform(accept_rng, (batch, k))
    accepted_B = jnp.sum(jnp.cumprod(u_Bxh * q_draft_Bxh < p_draft_Bxh, axis=1),
                         axis=1).astype(jnp.int32)
    p_accepted_BxV = _at(p_BxTxV, accepted_B)
    q_next_BxV = _at(jnp.concatenate([q_BxhxV, jnp.zeros_like(q_BxhxV[:, :1])], 1), accepted_B)
    residual_BxV = jnp.maximum(p_accepted_BxV - q_next_BxV, 0.0)
    mass_Bx1 = jnp.sum(residual_BxV, -1, keepdims=True)
    residual_BxV = jnp.where(mass_Bx1 > 0, residual_BxV / jnp.where(mass_Bx1 > 0, mass_Bx1, 1.0),
                             p_accepted_BxV)
    fix_B = sample_from(fix_rng, residual_BxV)
    t = jnp.arange(k + 1)[None, :]
    padded_drafts_BxT = jnp.concatenate([drafts_Bxh, drafts_Bxh[:, :1]], axis=1)
    new_BxT = jnp.where(t < accepted_B[:, None], padded_drafts_BxT, fix_B[:, None])
  out, n_gen, done, count = append_tokens(state, new_BxT, accepted_B + 1, active_B, spec.max_new)
  draft_logits_BxhxV = adapter.unembed(params, _at(hidden_BxTxhxD, accepted_B)[:, 1:])
  next_drafts = draft(knobs, draft_logits_BxhxV, draft_rng)
  keep = lambda new, old: jnp.where(active_B.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  return {**state, "cache": cache, "out": out, "n_gen": n_gen, "done": done, "rng": rng,
          "last": keep(_at(new_BxT, accepted_B), state["last"]),
          **{name: keep(value, state[name]) for name, value in next_drafts.items()},
          "steps": state["steps"] + 1, "row_steps": state["row_steps"] + active_B,
          "row_tokens": state["row_tokens"] + count}
