"""The per-token quantities of a ``Source`` on samples (definitions: the package docstring).

The models run on row chunks of the collated samples; the weighting functions then run once over
all shown rows, so the statistics a weight depends on (batch whitening, Rho-1's per-head quantile)
are those of the shown samples. Every output is target-aligned (``[B, S]``, entry ``t`` on token
``x_t``, DESIGN §2) before it is cut into each sample's response tokens.
"""

from collections.abc import Sequence

import jax
import numpy as np

from wmtp_jax import IGNORE_INDEX, arrays, losses, weighting
from wmtp_jax.analyze.samples import Sample
from wmtp_jax.analyze.source import CRITIC, Source
from wmtp_jax.checkpoints import pretrained
from wmtp_jax.data import template
from wmtp_jax.models.llama import LlamaForCausalLM, ValueModel
from wmtp_jax.models.mtp import MTPTransformer
from wmtp_jax.objectives import rho1

CRITIC_QUANTITIES = ("value", "td", "advantage", "weight")
REFERENCE_QUANTITIES = ("loss", "excess", "weight")
ROWS = 8  # rows per model call at most
LOGITS_BYTES = 2**30  # fewer rows when their float32 logits [rows, S, n, V] would exceed this


def available(source: Source) -> tuple[str, ...]:
  """The quantities ``source`` has: a critic's four; a reference's loss, with a policy (``rho1``
  run) also the excess loss and the Rho-1 weight."""
  if source.kind == CRITIC:
    return CRITIC_QUANTITIES
  return REFERENCE_QUANTITIES if source.policy is not None else REFERENCE_QUANTITIES[:1]


def head_view(x_BxSxn: np.ndarray, head: int) -> np.ndarray:
  """Target-aligned ``[B, S]`` view of head ``head``'s terms: ``out[b, j] = x[b, j−1−head,
  head]`` (the term whose target is ``x_j``), 0 where no such term exists (``j ≤ head``)."""
  x_BxSxn = np.asarray(x_BxSxn)
  out_BxS = np.zeros(x_BxSxn.shape[:2], x_BxSxn.dtype)
  out_BxS[:, 1 + head:] = x_BxSxn[:, :x_BxSxn.shape[1] - 1 - head, head]
  return out_BxS


def _chunked(fn, params, batch: dict[str, np.ndarray], keys: Sequence[str], *,
             rows: int = ROWS) -> np.ndarray:
  """``fn(params, *batch[keys])`` over chunks of ``rows`` rows (the last padded with row 0, one
  compiled shape), concatenated."""
  n_rows = len(batch["tokens"])
  take = np.concatenate([np.arange(n_rows), np.zeros(-n_rows % rows, np.int64)])
  parts = [np.asarray(fn(params, *(batch[k][take[i:i + rows]] for k in keys)))
           for i in range(0, len(take), rows)]
  return np.concatenate(parts)[:n_rows]


def _values(path, batch) -> np.ndarray:
  """``V [B, S]`` of the value model at ``path``."""
  cfg, params = pretrained.load_pretrained(path)
  model = ValueModel(cfg)
  fn = jax.jit(lambda p, tokens, mask: model.apply({"params": p}, tokens, mask))
  return _chunked(fn, params, batch, ("tokens", "attention_mask"))


def _token_ce(path, batch) -> np.ndarray:
  """``[B, S, n]`` cross-entropy of the language model at ``path`` (a LLaMA: n = 1; an MTP model:
  its heads), term ``[b, t, k]`` against ``x_{t+1+k}`` (0 where invalid)."""
  cfg, params = pretrained.load_pretrained(path)
  kind = pretrained.stored_kind(path)
  model = MTPTransformer(cfg) if kind == "mtp" else LlamaForCausalLM(cfg)
  n = cfg.n_future_tokens if kind == "mtp" else 1

  def fn(p, tokens, mask, labels):
    logits = model.apply({"params": p}, tokens, mask)
    logits_BxSxnxV = logits if kind == "mtp" else logits[:, :, None, :]
    targets_BxSxn, _ = losses.mtp_targets(labels, mask, n)
    return losses.token_ce(logits_BxSxnxV, targets_BxSxn)

  row_bytes = 4 * batch["tokens"].shape[1] * n * cfg.vocab_size
  return _chunked(jax.jit(fn), params, batch, ("tokens", "attention_mask", "labels"),
                  rows=max(1, min(ROWS, LOGITS_BYTES // row_bytes)))


def _critic(source: Source, batch, mask_BxS, head: int) -> dict[str, np.ndarray]:
  w = source.settings
  values_BxS = _values(source.model, batch)
  rewards_B = batch["is_correct"] if source.rewards else None
  returns = dict(gamma=w.gamma, initial_value=w.initial_value, rewards=rewards_B)
  td_BxS = weighting.td_errors(values_BxS, mask_BxS, **returns)
  advantages_BxS = weighting.gae_advantages(values_BxS, mask_BxS, lam=w.lam, **returns)
  if w.scheme == "gae_exp":
    mean, std = source.ema or (None, None)
    weights_BxS = weighting.exp_weights(advantages_BxS, mask_BxS, beta=w.beta,
                                        min_weight=w.min_weight, max_weight=w.max_weight,
                                        mean=mean, std=std)
  else:
    weights_BxS = head_view(weighting.softmax_head_weights(
        td_BxS, mask_BxS, source.n_heads, temperature=w.temperature), head)
  return {"value": values_BxS, "td": td_BxS, "advantage": advantages_BxS, "weight": weights_BxS}


def _reference(source: Source, batch, mask_BxS, head: int) -> dict[str, np.ndarray]:
  ref_ce_BxS = _token_ce(source.model, batch)[..., 0]   # position t → target x_{t+1}
  out = {"loss": head_view(ref_ce_BxS[..., None], 0)}
  if source.policy is None:
    return out
  policy_ce_BxSxn = _token_ce(source.policy, batch)
  n = policy_ce_BxSxn.shape[-1]
  ref_window_BxSxn = np.asarray(arrays.future_window(ref_ce_BxS, n, 0.0, offset=0))
  weights_BxSxn = rho1.method_weights(source.settings, policy_ce_BxSxn, ref_ce_BxS, mask_BxS)
  _, valid_BxSxn = losses.mtp_targets(batch["labels"], batch["attention_mask"], n)
  excess_BxS = np.where(head_view(valid_BxSxn, head),
                        head_view(policy_ce_BxSxn - ref_window_BxSxn, head), 0.0)
  return {**out, "excess": excess_BxS, "weight": head_view(weights_BxSxn, head)}


def collect(source: Source, samples: Sequence[Sample], *,
            head: int = 0) -> list[dict[str, np.ndarray]]:
  """Per sample, ``{quantity: [N] float32}`` over its ``N`` response tokens (``available``).

  ``head``: the MTP head whose terms per-term weights and the excess loss show (0 = next token).
  """
  if not 0 <= head < source.n_heads:
    raise ValueError(f"--head {head}: the run's policy has {source.n_heads} head(s), 0 … "
                     f"{source.n_heads - 1}")
  batch = template.collate([s.example for s in samples], pad_id=0)
  mask_BxS = (batch["labels"] != IGNORE_INDEX) & (batch["attention_mask"] != 0)
  compute = _critic if source.kind == CRITIC else _reference
  arrays_BxS = {k: np.asarray(v, np.float32)
                for k, v in compute(source, batch, mask_BxS, head).items()}
  return [{k: v[i, s.start:s.start + s.n_tokens] for k, v in arrays_BxS.items()}
          for i, s in enumerate(samples)]
