"""Model presets for ``configs/*.py``: plain dicts of ``MTPConfig`` / ``LlamaConfig`` fields.

``configs/<pipeline>.py`` put one of these under ``config.model`` (or ``config.critic`` …) and
``build`` turns the (possibly overridden) ``ConfigDict`` into the frozen dataclass, strictly.
"""

import copy
from typing import Any

from wmtp_jax.models import strict

MTP_PRESETS: dict[str, dict[str, Any]] = {
    # A few layers and small dims (4 trunk blocks + 4 heads): trains on a laptop CPU in minutes.
    "tiny": dict(dim=128, n_layers=8, n_heads=4, n_kv_heads=4, vocab_size=512, multiple_of=32,
                 ffn_dim_multiplier=1.0, norm_eps=1e-5, rope_theta=10000.0, n_future_tokens=4,
                 max_seq_len=256),
    # Meta's 7B_1T_4 (params.json numbers; max_seq_len is not in the file).
    "7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, vocab_size=32000, multiple_of=256,
               ffn_dim_multiplier=1.0, norm_eps=1e-5, rope_theta=10000.0, n_future_tokens=4,
               max_seq_len=2048),
}


def _llama3_scaling(factor: float) -> dict[str, Any]:
  """LLaMA-3.1 / 3.2's ``rope_scaling`` (``layers.RopeScaling``) with ``factor``."""
  return dict(rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8192)


_LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  rms_norm_eps=1e-5, rope_theta=500000.0)

LLAMA_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                 rms_norm_eps=1e-5, rope_theta=10000.0),
    # princeton-nlp/Sheared-LLaMA-2.7B: the critic / reference backbone of the 7b runs.
    "sheared_llama_2.7b": dict(vocab_size=32000, hidden_size=2560, intermediate_size=6912,
                               num_hidden_layers=32, num_attention_heads=20, num_key_value_heads=20,
                               max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0),
    # codellama/CodeLlama-7b-Python-hf.
    "codellama_7b_python": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                num_hidden_layers=32, num_attention_heads=32,
                                num_key_value_heads=32, max_position_embeddings=16384,
                                rms_norm_eps=1e-5, rope_theta=1e6),
    # meta-llama/Meta-Llama-3-8B (8.03B parameters).
    "llama3_8b": dict(_LLAMA3_8B, max_position_embeddings=8192),
    # meta-llama/Llama-3.1-8B: LLaMA-3-8B's shapes, 128K positions by ``llama3`` RoPE scaling.
    "llama3.1_8b": dict(_LLAMA3_8B, max_position_embeddings=131072,
                        rope_scaling=_llama3_scaling(8.0)),
    # meta-llama/Llama-3.2-1B (1.24B parameters: the output projection is the embedding table).
    "llama3.2_1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                        rope_scaling=_llama3_scaling(32.0), tie_word_embeddings=True),
}


def _preset(table: dict[str, dict[str, Any]], kind: str, name: str, overrides) -> dict[str, Any]:
  if name not in table:
    raise ValueError(f"unknown {kind} preset {name!r}; known: {sorted(table)}")
  return {**copy.deepcopy(table[name]), **overrides}


def mtp(name: str, **overrides: Any) -> dict[str, Any]:
  """The ``MTPConfig`` fields of preset ``name`` (``tiny`` | ``7b``) with ``overrides``."""
  return _preset(MTP_PRESETS, "MTP", name, overrides)


def llama(name: str, **overrides: Any) -> dict[str, Any]:
  """The ``LlamaConfig`` fields of preset ``name`` with ``overrides`` (e.g. ``value_head``)."""
  return _preset(LLAMA_PRESETS, "LLaMA", name, overrides)


def build(cls, section, *, where: str):
  """``cls`` from a config section (``ConfigDict`` or dict); unknown keys name ``where``."""
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  return strict.from_dict(cls, values, where=where)

