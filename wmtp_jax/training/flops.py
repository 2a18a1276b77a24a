"""FLOPs of a train step and the device peak, for the MFU estimate (``mfu``).

Per token, a forward pass costs ``2 · (matmul parameters used)`` plus attention ``4 · L · S · D``
(``QKᵀ`` and ``AV`` over the full ``S`` keys, the usual convention that ignores causal masking);
training costs 3× the forward of the trained model (forward + backward) plus the forward of frozen
models (critic / reference). For the MTP model every trunk and head block runs once per token and
the shared unembedding ``D·V`` runs once per head (the ``train_heads`` first heads when set: the
others are not run). The peak, unless configured, is measured with
a matmul in the trained model's compute dtype (its ``cfg.dtype``, ``config.model.dtype`` where set:
bf16 runs at several times the fp32 rate on accelerators). ``known_peak_flops`` looks up the data
sheet's dense bf16 peak of a device kind (``BF16_PEAK_FLOPS``).

Equal-FLOPs budgets: every run logs ``flops/train_cumulative`` (``CUMULATIVE``, the ``step_flops``
of its steps so far); ``budget_steps`` turns ``config.budget.flops`` into a step count from the
mean cost of sampled steps, so an arm with frozen-model forwards (verifiable's critic, Rho-1's
reference) gets fewer steps than one without. The FLOPs that trained the frozen models are their
own runs' ``CUMULATIVE``.
"""

import math
import time
from collections.abc import Iterable

import jax
import jax.numpy as jnp

from wmtp_jax.models.layers import BlockConfig
from wmtp_jax.models.llama import LlamaConfig, LlamaForCausalLM
from wmtp_jax.models.mtp import MTPConfig

# Dense (no sparsity) bf16 peak FLOP/s of one device, from the vendors' data sheets, by a
# lower-case part of ``jax.Device.device_kind``; the first pattern the kind contains wins, so
# the variants come before their family (H100 PCIe / NVL before H100 SXM, TPU v5 lite before v5p).
BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12), ("h100 nvl", 835e12), ("h100", 989e12), ("h200", 989e12),
    ("h800", 989e12), ("b200", 2250e12), ("a100", 312e12), ("a800", 312e12), ("l40s", 362e12),
    ("l4", 121e12),
    ("tpu v4", 275e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12), ("tpu v6e", 918e12),
)


def _block_matmul_params(b: BlockConfig) -> int:
  return b.dim * b.head_dim * (2 * b.n_heads + 2 * b.n_kv_heads) + 3 * b.dim * b.ffn_hidden


def forward_flops_per_token(cfg: MTPConfig | LlamaConfig, seq_len: int, *, lm_head: bool) -> float:
  """Forward FLOPs per token of an MTP model or a LLaMA (with or without its ``lm_head``)."""
  b = cfg.block
  if isinstance(cfg, MTPConfig):
    heads = cfg.train_heads or cfg.n_future_tokens  # a train step runs only the trained heads
    n_blocks = cfg.n_trunk_layers + heads
    head = heads * cfg.dim * cfg.vocab_size
  else:
    n_blocks, head = cfg.num_hidden_layers, cfg.hidden_size * cfg.vocab_size if lm_head else 0
  return 2.0 * (n_blocks * _block_matmul_params(b) + head) + 4.0 * n_blocks * seq_len * b.dim


def _has_lm_head(module) -> bool:
  """A LLaMA language model, or a value model that reads its own LM (``hidden_logprob``)."""
  return isinstance(module, LlamaForCausalLM) or (
      isinstance(module.cfg, LlamaConfig) and module.cfg.value_inputs == "hidden_logprob")


def train_flops_per_token(objective, seq_len: int) -> float:
  """Train-step FLOPs per token: 3× the trained model's forward + the frozen models' forward."""
  total = 3.0 * forward_flops_per_token(objective.model.cfg, seq_len,
                                        lm_head=_has_lm_head(objective.model))
  for module in objective.frozen_models.values():
    total += forward_flops_per_token(module.cfg, seq_len, lm_head=_has_lm_head(module))
  return total


CUMULATIVE = "flops/train_cumulative"


def step_flops(objective, rows: int, seq_len: int) -> float:
  """Train FLOPs of one step on ``rows`` × ``seq_len`` tokens (``train_flops_per_token``)."""
  return train_flops_per_token(objective, seq_len) * rows * seq_len


def budget_steps(budget: float, objective, shapes: Iterable[tuple[int, int]]) -> int:
  """Steps that spend about ``budget`` FLOPs: ``budget`` over the mean ``step_flops`` of the
  sampled step batches ``shapes`` (``(rows, S)`` each), rounded, at least 1."""
  costs = [step_flops(objective, rows, seq_len) for rows, seq_len in shapes]
  if budget <= 0 or not costs:
    raise ValueError(f"config.budget.flops={budget}: a FLOPs budget needs a positive value and "
                     f"at least one sampled batch ({len(costs)} given)")
  return max(1, round(budget * len(costs) / math.fsum(costs)))


def mfu(objective, rows: int, seq_len: int, seconds: float, peak: float) -> float:
  """Model FLOPs utilisation of a train step on ``rows`` × ``seq_len`` tokens that took
  ``seconds``, against ``peak`` FLOP/s (all devices)."""
  return step_flops(objective, rows, seq_len) / seconds / peak


def measure_peak_flops(dtype, n: int = 2048, repeats: int = 5) -> float:
  """Matmul FLOP/s of one local device in ``dtype`` (a name or dtype), measured now (the MFU
  denominator when none is configured): best of ``repeats`` ``[n, n] @ [n, n]``."""
  x = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best


def known_peak_flops(device_kind: str) -> float | None:
  """The dense bf16 peak FLOP/s of one device of ``device_kind`` (``BF16_PEAK_FLOPS``; e.g.
  ``"NVIDIA H100 80GB HBM3"`` → 989e12, ``"TPU v5 lite"`` → 197e12), None for a kind not in it."""
  kind = device_kind.lower()
  return next((peak for pattern, peak in BF16_PEAK_FLOPS if pattern in kind), None)


def peak_flops(configured: float, dtype) -> float:
  """Peak FLOP/s of all devices: ``configured`` per device, or measured in ``dtype`` (the model's
  compute dtype) when 0."""
  per_device = configured if configured > 0 else measure_peak_flops(dtype)
  return per_device * jax.device_count()
