"""
Causal self-attention and causal cross-attention, as in the course's minGPT fork.

Both modules keep the course's parameter names (key, query, value, proj) and its
`mask` buffer, so params files move between this project and the course code.

Two ways to compute the same attention:
- the plain way (`config.fast = False`): the course's explicit (T x T) score
  tensor, masked_fill, softmax, nn.Dropout, matmul. Kept for comparison and debugging.
- the fast way (default): on CUDA, torch's scaled_dot_product_attention (flash
  kernels, dropout inside). On CPU the explicit tensor with a cheaper dropout
  mask (see Dropout), because there, measured on 2 cores for a (16, 8, 64, 32)
  forward+backward: SDPA in bf16 took 9.8 ms against 2.2 ms explicit, and
  SDPA with dropout (its math fallback) 7.1 ms against 3.3 ms explicit with
  the cheaper mask. Same function either way (tests check this to ~1e-5).
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class Dropout(nn.Dropout):
    """
    nn.Dropout with a cheaper mask on CPU: four 16-bit thresholds cut from each
    64-bit random word. bernoulli_, which nn.Dropout uses, took 21 ms for a
    (128, 8, 60, 60) mask against 4 ms this way on 2 cores, and was a fifth of a
    training step. The drop probability is rounded to a multiple of 1/65536
    (0.1 becomes 0.100006). On CUDA, or when not training, it is nn.Dropout.
    """

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        # (-2**63, None): all 64 bits; plain random_() leaves the top bit 0, and the
        # fourth 16-bit lane of every word would never be dropped
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)
        keep = words.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def dropout(p, config):
    """The course's nn.Dropout on the plain path, the cheaper mask on the fast one."""
    return Dropout(p) if getattr(config, "fast", True) else nn.Dropout(p)


def _split_heads(t, n_head):
    B, T, C = t.size()
    return t.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    """
    A vanilla multi-head masked self-attention layer with a projection at the end.
    """

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        self.attn_drop = dropout(config.attn_pdrop, config)
        self.resid_drop = dropout(config.resid_pdrop, config)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        # persistent on purpose: the course's params files carry this buffer
        self.register_buffer("mask", torch.tril(torch.ones(config.block_size, config.block_size))
                             .view(1, 1, config.block_size, config.block_size))
        self.n_head = config.n_head
        self.fast = getattr(config, "fast", True)

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()
        k = _split_heads(self.key(x), self.n_head)
        q = _split_heads(self.query(x), self.n_head)
        v = _split_heads(self.value(x), self.n_head)
        q_offset, row_mask = 0, None
        if kv_cache is not None:
            # decoding: x holds only the new positions; earlier keys/values come from the cache
            q_offset, row_mask = kv_cache.length, kv_cache.row_mask(T)
            k, v = kv_cache.update(self, k, v)
        y = attend(q, k, v, self.mask, self.attn_drop, self.fast, q_offset, row_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))


class CausalCrossAttention(CausalSelfAttention):
    """
    Causal cross-attention: keys and values from x_kv (length Tk), queries from
    x_q (length Tq); query i sees keys 0..i (the mask's [:Tq, :Tk] corner).
    Used by the Perceiver's DownProjectBlock and UpProjectBlock. Same parameters
    and mask as self-attention.
    """

    def forward(self, x_kv, x_q):
        Bk, Tk, C = x_kv.size()
        Bq, Tq, _ = x_q.size()
        k = _split_heads(self.key(x_kv), self.n_head)
        q = _split_heads(self.query(x_q), self.n_head)
        v = _split_heads(self.value(x_kv), self.n_head)
        if Bq != Bk:
            # the Perceiver's learned basis C has batch 1: broadcast it
            q = q.expand(max(Bk, Bq), -1, -1, -1)
        y = attend(q, k, v, self.mask, self.attn_drop, self.fast)
        y = y.transpose(1, 2).contiguous().view(max(Bk, Bq), Tq, C)
        return self.resid_drop(self.proj(y))


def attend(q, k, v, mask, attn_drop, fast, q_offset=0, row_mask=None):
    """
    softmax(q k^T / sqrt(hs), causal) v, with dropout on the attention weights.
    q is (B, nh, Tq, hs), k and v (B, nh, Tk, hs); query i sees keys 0..q_offset+i
    (the course's mask[:Tq, :Tk] when q_offset is 0; decoding with a cache sets
    q_offset to the number of cached positions), and of those only the ones that
    row_mask (B, Tq, Tk), if given, allows.
    """
    Tq, Tk = q.size(-2), k.size(-2)
    m = mask[:, :, q_offset:q_offset + Tq, :Tk]
    if row_mask is not None:
        m = m * row_mask[:, None]
    if fast and q.device.type != "cpu":
        dropout_p = attn_drop.p if attn_drop.training else 0.0
        if q_offset == 0 and row_mask is None:
            # is_causal is top-left aligned like the course mask, and lets CUDA use flash kernels
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m.bool(), dropout_p=dropout_p)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    att = att.masked_fill(m == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = attn_drop(att)
    return att @ v


class KVCache:
    """
    Keys and values of the positions decoded so far, per self-attention layer.
    Prompts of different lengths share a batch left-padded: pad (B,) holds each
    row's number of padding positions, which its real positions never see and
    which do not count in its position numbers.
    """

    def __init__(self, pad=None):
        self.kv = {}
        self.length = 0  # positions already cached (the same in every layer)
        self.pad = pad
        self.mask = None  # row_mask of the current step, shared by the layers

    def positions(self, t):
        """Position numbers (B, t) of the next t positions of each row (padding at 0)."""
        p = torch.arange(self.length, self.length + t, device=self.pad.device)
        return (p[None, :] - self.pad[:, None]).clamp(min=0)

    def row_mask(self, t):
        """Which keys (B, t, length + t) the next t positions may see, besides causality, or None."""
        if self.pad is None:
            return None
        if self.mask is None or self.mask.size(-1) != self.length + t:  # once a step, not once a layer
            key = torch.arange(self.length + t, device=self.pad.device)
            real_key = key[None, :] >= self.pad[:, None]
            real_query = key[None, self.length:] >= self.pad[:, None]
            # padding positions see padding, so that no softmax row is empty (an empty row is NaN)
            self.mask = real_key[:, None, :] | ~real_query[:, :, None]
        return self.mask

    def update(self, layer, k, v):
        if layer in self.kv:
            k = torch.cat([self.kv[layer][0], k], dim=2)
            v = torch.cat([self.kv[layer][1], v], dim=2)
        self.kv[layer] = (k, v)
        return k, v
