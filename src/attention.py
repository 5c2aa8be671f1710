"""
Causal self-attention and causal cross-attention, as in the course's minGPT fork,
and the 2024-25 course's rotary position embeddings (config.rope).

Both modules keep the course's parameter names (key, query, value, proj) and its
`mask` buffer (and, with rope, its `rope_cache`), so params files move between this
project and the course code.
Wherever dropout is active in training, attention is the course's computation on
every device: the explicit (T x T) score tensor, masked_fill, softmax, dropout (on
CPU with a cheaper mask, fast_dropout.py). torch's scaled_dot_product_attention
(SDPA) computes it only where no dropout applies, off the CPU: evaluation and
decoding. Why: the one full GPU pretraining that trained with SDPA's dropout (bf16,
an H100) never left the loss plateau; some of its kernels round p, and one
(cuDNN's) has an open loss-explosion report (results/gpu/README.md). On CPU the
explicit computation measured faster than SDPA (results/README.md, "Speed notes").
config.attention = "sdpa" forces SDPA, dropout inside, everywhere (the GPU check's
bisect, and tests of that branch on CPU); "explicit" never uses it.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from fast_dropout import dropout


def precompute_rotary_emb(dim, max_positions):
    """
    RoPE's angles, as the 2024 course caches them: a (max_positions, dim / 2, 2) tensor
    whose [t, i - 1] holds cos and sin of t * theta_i, theta_i = 10000^(-2(i - 1) / dim),
    i = 1 .. dim / 2.
    """
    theta = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * theta[None, :]
    return torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)


def apply_rotary_emb(x, rope_cache):
    """x (..., T, hs) with each feature pair (2i, 2i + 1) at position t rotated by t * theta_i
    (the cache truncated to the sequence's T positions)."""
    return rotate(x, rope_cache[:x.size(-2)])


def rotate(x, angles):
    """
    x (..., T, hs) rotated pair by pair by angles (..., T, hs / 2, 2) of cos and sin:
    (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
    """
    # in x's precision (bf16 under autocast): float32 angles would double the kernels' traffic
    cos = angles[..., 0].repeat_interleave(2, dim=-1).to(x.dtype)
    sin = torch.stack((-angles[..., 1], angles[..., 1]), dim=-1).flatten(-2).to(x.dtype)
    return Rotation.apply(x, cos, sin)


def swap_pairs(x):
    """(x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...) along the last dimension."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


class Rotation(torch.autograd.Function):
    """
    x * cos + swap_pairs(x) * sin, with sin signed (-sin, sin) per pair; its gradient is the
    rotation back, g * cos - swap_pairs(g) * sin. Three kernels each way, where autograd's
    backward of the same expression takes five (a bf16 CPU training step of rope: 13% more
    than vanilla's that way, 10% this way, measured side by side).
    """

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return torch.addcmul(x * cos, swap_pairs(x), sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return torch.addcmul(grad * cos, swap_pairs(grad), sin, value=-1), None, None


class CausalSelfAttention(nn.Module):
    """
    A vanilla multi-head masked self-attention layer with a projection at the end.
    """

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # key, query, value projections for all heads
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        # regularization
        self.attn_drop = dropout(config.attn_pdrop, config)
        self.resid_drop = dropout(config.resid_pdrop, config)
        # output projection
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        # causal mask to ensure that attention is only applied to the left in the input sequence;
        # persistent on purpose: the course's params files carry this buffer
        self.register_buffer("mask", torch.tril(torch.ones(config.block_size, config.block_size))
                             .view(1, 1, config.block_size, config.block_size))
        self.n_head = config.n_head
        self.plain = getattr(config, "plain", False)
        self.attention = "explicit" if self.plain else getattr(config, "attention", "auto")
        self.rope = getattr(config, "rope", False)
        if self.rope:
            assert (config.n_embd // config.n_head) % 2 == 0, "RoPE rotates pairs of features: the head size must be even"
            # persistent, as the 2024 course's: its params files carry this buffer
            self.register_buffer("rope_cache", precompute_rotary_emb(config.n_embd // config.n_head, config.block_size))

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()

        # calculate query, key, values for all heads in batch and move head forward to be the batch dim
        k = self.key(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = self.query(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.rope:
            # apply_rotary_emb(q), apply_rotary_emb(k) in one call, stacked: a bf16 CPU training step cost 11%
            # more than vanilla's with two calls, 7% so (results/bench_speed.md); decoding gives each
            # row's angles at its own position numbers (decoding.py)
            angles = self.rope_cache[:T] if kv_cache is None else kv_cache.rope_angles(self.rope_cache, T)
            q, k = rotate(torch.stack((q, k)), angles).unbind(0)
        mask = None
        if kv_cache is not None:
            # decoding (decoding.py): x holds only the new positions; the earlier ones' keys and
            # values come from the cache, which also says which keys each new position sees
            k, v, mask = kv_cache.update(self, k, v)

        y = self.attend(q, k, v, mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side

        # output projection
        y = self.resid_drop(self.proj(y))
        return y

    def attend(self, q, k, v, mask=None):
        """
        softmax(q k^T / sqrt(hs)) v with dropout on the weights; q is (B, nh, Tq, hs), k and v
        (B, nh, Tk, hs). mask (1 or B, 1, Tq, Tk) says which keys each query sees; None: the
        course's mask[:Tq, :Tk], query i sees keys 0..i.
        """
        dropout_p = self.attn_drop.p if self.training else 0.0
        if self.attention == "sdpa" or (self.attention == "auto" and dropout_p == 0 and q.device.type != "cpu"):
            if mask is None:
                # is_causal is top-left aligned like the course's mask, and lets CUDA use flash kernels
                return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool(), dropout_p=dropout_p)
        if mask is None:
            mask = self.mask[:, :, :q.size(-2), :k.size(-2)]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(mask == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_drop(att)
        return att @ v  # (B, nh, Tq, Tk) x (B, nh, Tk, hs) -> (B, nh, Tq, hs)


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

        k = self.key(x_kv).view(Bk, Tk, self.n_head, C // self.n_head).transpose(1, 2)  # (Bk, nh, Tk, hs)
        q = self.query(x_q).view(Bq, Tq, self.n_head, C // self.n_head).transpose(1, 2)  # (Bq, nh, Tq, hs)
        v = self.value(x_kv).view(Bk, Tk, self.n_head, C // self.n_head).transpose(1, 2)  # (Bk, nh, Tk, hs)
        if Bq != Bk:
            # the Perceiver's learned basis C has batch 1: broadcast it
            q = q.expand(max(Bk, Bq), -1, -1, -1)

        y = self.attend(q, k, v)
        y = y.transpose(1, 2).contiguous().view(max(Bk, Bq), Tq, C)

        # output projection
        y = self.resid_drop(self.proj(y))
        return y
