"""PyTorch reference pieces shared by the parity tests (``test_mtp``, ``test_llama``,
``test_layers``, ``test_layouts``, ``test_convert``, ``test_export``) and their tiny MTP config
``TINY_MTP``.

``TorchMTP`` is a plain PyTorch transcription of Meta's ``llama/model.py`` (complex interleaved
RoPE, ``layers[:-1]`` trunk, ``[layers[-1], *extra_heads]`` parallel heads, one shared norm and
output) with a key padding mask added; its state dict has Meta's key names.
"""

import math

import numpy as np
import torch
import transformers

from wmtp_jax.models import layers
from wmtp_jax.models.mtp import MTPConfig

TINY_MTP = dict(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32,
                ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500.0, n_future_tokens=3)

class TorchRMSNorm(torch.nn.Module):

  def __init__(self, dim, eps):
    super().__init__()
    self.eps, self.weight = eps, torch.nn.Parameter(torch.ones(dim))

  def forward(self, x):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def torch_freqs_cis(head_dim, seqlen, theta):
  freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
  angles = torch.outer(torch.arange(seqlen).float(), freqs)
  return torch.polar(torch.ones_like(angles), angles)


def torch_apply_rotary(x, freqs_cis):
  x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
  return torch.view_as_real(x_ * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


class TorchAttention(torch.nn.Module):

  def __init__(self, dim, n_heads, n_kv_heads):
    super().__init__()
    self.n_heads, self.n_kv, self.hd = n_heads, n_kv_heads, dim // n_heads
    self.wq = torch.nn.Linear(dim, n_heads * self.hd, bias=False)
    self.wk = torch.nn.Linear(dim, n_kv_heads * self.hd, bias=False)
    self.wv = torch.nn.Linear(dim, n_kv_heads * self.hd, bias=False)
    self.wo = torch.nn.Linear(n_heads * self.hd, dim, bias=False)

  def forward(self, x, freqs_cis, mask):
    b, s, _ = x.shape
    q = torch_apply_rotary(self.wq(x).view(b, s, self.n_heads, self.hd), freqs_cis)
    k = torch_apply_rotary(self.wk(x).view(b, s, self.n_kv, self.hd), freqs_cis)
    v = self.wv(x).view(b, s, self.n_kv, self.hd)
    rep = self.n_heads // self.n_kv
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scores = q @ k.transpose(2, 3) / math.sqrt(self.hd) + mask
    out = torch.softmax(scores.float(), dim=-1).type_as(q) @ v
    return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class TorchBlock(torch.nn.Module):

  def __init__(self, cfg: MTPConfig):
    super().__init__()
    hidden = layers.meta_ffn_hidden(cfg.dim, cfg.multiple_of, cfg.ffn_dim_multiplier)
    self.attention = TorchAttention(cfg.dim, cfg.n_heads, cfg.n_kv_heads)
    self.feed_forward = torch.nn.Module()
    self.feed_forward.w1 = torch.nn.Linear(cfg.dim, hidden, bias=False)
    self.feed_forward.w2 = torch.nn.Linear(hidden, cfg.dim, bias=False)
    self.feed_forward.w3 = torch.nn.Linear(cfg.dim, hidden, bias=False)
    self.attention_norm = TorchRMSNorm(cfg.dim, cfg.norm_eps)
    self.ffn_norm = TorchRMSNorm(cfg.dim, cfg.norm_eps)

  def forward(self, x, freqs_cis, mask):
    h = x + self.attention(self.attention_norm(x), freqs_cis, mask)
    ff = self.feed_forward
    y = self.ffn_norm(h)
    return h + ff.w2(torch.nn.functional.silu(ff.w1(y)) * ff.w3(y))


class TorchMTP(torch.nn.Module):
  """Meta's ``Transformer`` with ``n_future_tokens`` heads."""

  def __init__(self, cfg: MTPConfig):
    super().__init__()
    self.cfg = cfg
    self.tok_embeddings = torch.nn.Embedding(cfg.vocab_size, cfg.dim)
    self.layers = torch.nn.ModuleList(
        TorchBlock(cfg) for _ in range(cfg.n_layers - cfg.n_future_tokens + 1))
    self.extra_heads = torch.nn.ModuleList(TorchBlock(cfg) for _ in range(cfg.n_future_tokens - 1))
    self.norm = TorchRMSNorm(cfg.dim, cfg.norm_eps)
    self.output = torch.nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

  def forward(self, tokens, attention_mask):
    s = tokens.shape[1]
    freqs_cis = torch_freqs_cis(self.cfg.dim // self.cfg.n_heads, s, self.cfg.rope_theta)
    causal = torch.triu(torch.full((s, s), float("-inf")), diagonal=1)
    pad = torch.where(attention_mask[:, None, None, :].bool(), 0.0, float("-inf"))
    mask = causal[None, None] + pad
    h = self.tok_embeddings(tokens)
    for layer in self.layers[:-1]:
      h = layer(h, freqs_cis, mask)
    latents = [head(h, freqs_cis, mask) for head in [self.layers[-1], *self.extra_heads]]
    return self.output(self.norm(torch.stack(latents, dim=-2))).float()


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
