"""The decode state that the jitted prefill hands to the ``lax.while_loop`` of decode steps
(plain, ``wmtp_jax.decoding.generator``, or speculative, ``wmtp_jax.decoding.speculative``), and
the static description of one compiled generator.

Layout (B rows, cache slots per row; ``layers.Attention`` KV-cache mode): row ``b``'s prompt fills
slots ``0 … len_b − 1``; the generated token ``i`` (0-based) goes to slot ``len_b + i``; each row
has its own write index, so prompts need no left padding and positions are the slots, exactly as
in a full forward pass over the unpadded sequence. Slots past a row's own are never attended to.

Decode state (a dict pytree): ``cache``; ``out [B, max_new + k + 1]`` generated tokens;
``n_gen [B]`` how many are valid; ``lengths [B]`` the prompt lengths; ``last [B]`` the newest
token (not yet in the cache, its slot is ``len_b + n_gen − 1``); ``done [B]`` (EOS,
``max_new_tokens`` or a stop sequence); ``drafts`` / ``draft_probs`` (speculative); ``rng``;
``steps`` / ``row_steps`` / ``row_tokens`` counters; the traced sampling values ``temperature``,
``top_p`` and ``eos_id``.
"""

import dataclasses

import jax
import jax.numpy as jnp

from wmtp_jax.decoding.sampling import Knobs


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Static description of one compiled generator."""
  greedy: bool
  nucleus: bool
  max_new: int
  draft_heads: int
  cache_len: int

  @property
  def heads(self) -> int:
    return 1 + self.draft_heads

  def knobs(self, state) -> Knobs:
    return Knobs(self.greedy, self.nucleus, state["temperature"], state["top_p"])


def initial_state(spec: DecodeSpec, cache, lengths_B, rng, temperature, top_p, eos_id) -> dict:
  """The state before the first token: nothing generated, no row done."""
  batch = lengths_B.shape[0]
  return dict(
      temperature=jnp.asarray(temperature, jnp.float32), top_p=jnp.asarray(top_p, jnp.float32),
      eos_id=jnp.asarray(eos_id, jnp.int32),
      cache=cache, out=jnp.zeros((batch, spec.max_new + spec.draft_heads + 1), jnp.int32),
      n_gen=jnp.zeros((batch,), jnp.int32), done=jnp.zeros((batch,), bool),
      lengths=lengths_B, rng=rng, steps=jnp.int32(0), row_steps=jnp.zeros((batch,), jnp.int32),
      row_tokens=jnp.zeros((batch,), jnp.int32))


def write_rows(buffer_BxS, values_BxT, start_B, active_B):
  """``buffer[b, start[b] : start[b] + T] = values[b]`` for active rows."""
  written = jax.vmap(lambda buf, val, i: jax.lax.dynamic_update_slice_in_dim(buf, val, i, 0))(
      buffer_BxS, values_BxT.astype(buffer_BxS.dtype), start_B)
  return jnp.where(active_B[:, None], written, buffer_BxS)


def append_tokens(state, new_BxT, count_B, active_B, max_new: int):
  """Appends the first ``count_B`` of ``new_BxT`` to active rows, cut after an EOS and at
  ``max_new``; returns the updated ``(out, n_gen, done, accepted_count)``."""
  t = jnp.arange(new_BxT.shape[1])[None, :]
  is_eos_BxT = (new_BxT == state["eos_id"]) & (t < count_B[:, None])
  first_eos_B = jnp.where(is_eos_BxT.any(-1), jnp.argmax(is_eos_BxT, -1), new_BxT.shape[1])
  count = jnp.minimum(jnp.minimum(count_B, first_eos_B + 1), max_new - state["n_gen"])
  out = write_rows(state["out"], new_BxT, state["n_gen"], active_B)
  n_gen = state["n_gen"] + jnp.where(active_B, count, 0)
  done = state["done"] | (active_B & (is_eos_BxT.any(-1) | (n_gen >= max_new)))
  return out, n_gen, done, jnp.where(active_B, count, 0)
