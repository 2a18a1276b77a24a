"""A plain PyTorch transcription of Meta's MTP ``Transformer`` (``llama/model.py`` of the
``7B_1T_4`` release), the source model of ``python -m wmtp_jax.convert verify --meta`` and of the
parity tests.

Complex interleaved RoPE (adjacent dims (2i, 2i+1) form one rotation), the trunk ``layers[:-1]``,
the ``n_future_tokens`` parallel heads ``[layers[-1], *extra_heads]`` all reading the trunk output,
one shared final norm and one shared untied output; a key padding mask is added (Meta's code has
none). ``TorchMTP(cfg).state_dict()`` has Meta's key names, so it loads ``consolidated.pth``
strictly. Needs the optional ``torch`` dependency (``pip install wmtp_jax[convert]``).
"""

import math

import torch

from wmtp_jax.models import layers
from wmtp_jax.models.mtp import MTPConfig


class TorchRMSNorm(torch.nn.Module):
  """Meta's RMSNorm: normalised in fp32, cast back, times ``weight`` ``[D]``."""

  def __init__(self, dim, eps):
    super().__init__()
    self.eps, self.weight = eps, torch.nn.Parameter(torch.ones(dim))

  def forward(self, x):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def torch_freqs_cis(head_dim, seqlen, theta):
  """``[S, H/2]`` complex rotations ``e^{i·t·θ^(−2j/H)}`` of positions ``t < seqlen``."""
  freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
  angles = torch.outer(torch.arange(seqlen).float(), freqs)
  return torch.polar(torch.ones_like(angles), angles)


def torch_apply_rotary(x, freqs_cis):
  """Rotates ``x`` ``[B, S, Q, H]`` by ``freqs_cis`` ``[S, H/2]``, dims (2j, 2j+1) as one complex
  number (Meta's interleaved layout)."""
  x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
  return torch.view_as_real(x_ * freqs_cis[None, :, None, :]).flatten(3).type_as(x)


class TorchAttention(torch.nn.Module):
  """GQA self-attention (``wq``, ``wk``, ``wv``, ``wo``; KV heads repeated to the query heads)."""

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
  """Pre-norm block: ``h = x + attention(attention_norm(x))``, ``h + w2(silu(w1 y) · w3 y)`` with
  ``y = ffn_norm(h)``."""

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
    """``tokens`` ``[B, S]`` int, ``attention_mask`` ``[B, S]`` (1 real, 0 padding) → fp32
    logits ``[B, S, n, V]``."""
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
