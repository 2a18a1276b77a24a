"""PyTorch reference pieces shared by the parity tests (``test_mtp``, ``test_llama``,
``test_layers``, ``test_layouts``, ``test_convert``, ``test_export``) and their tiny MTP config
``TINY_MTP``.

``TorchMTP`` (with its RoPE helpers) is the package's PyTorch transcription of Meta's
``llama/model.py``, ``wmtp_jax.checkpoints.torch_mtp`` (also the source model of ``python -m
wmtp_jax.convert verify --meta``), re-exported here.
"""

import numpy as np
import torch
import transformers

# Re-exported for the tests: the one transcription of Meta's MTP lives in the package.
from wmtp_jax.checkpoints.torch_mtp import (  # noqa: F401
    TorchMTP, torch_apply_rotary, torch_freqs_cis)

TINY_MTP = dict(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32,
                ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500.0, n_future_tokens=3)


def randomize_(module: torch.nn.Module, seed: int) -> None:
  """Random weights everywhere, norms included (ones would hide a mis-mapped norm)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.2) + (p.ndim == 1))


def hf_llama(seed: int, vocab_size: int = 89):
  """A small random ``transformers.LlamaForCausalLM`` (eager attention, untied):
  ``(config, model)``."""
  hf_cfg = transformers.LlamaConfig(
      vocab_size=vocab_size, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
      rope_theta=1000.0, tie_word_embeddings=False, attn_implementation="eager")
  ref = transformers.LlamaForCausalLM(hf_cfg).eval()
  randomize_(ref, seed)
  return hf_cfg, ref


def state_dict_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def padded_batch(rng, vocab, batch, seq, lengths):
  tokens = rng.integers(0, vocab, size=(batch, seq))
  mask = (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  return tokens, mask
