"""
Causal self-attention and causal cross-attention, as in the course's minGPT fork.

Both modules keep the course's parameter names (key, query, value, proj) and its
`mask` buffer, so params files move between this project and the course code.
With config.plain the computation is the course's: the explicit (T x T) score
tensor, masked_fill, softmax, nn.Dropout. Otherwise the same function is computed
faster: on a GPU by torch's scaled_dot_product_attention (flash kernels, dropout
inside), on CPU explicitly with a cheaper dropout mask (fast_dropout.py), which
measured faster there than SDPA (results/README.md, "Speed notes").
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from fast_dropout import dropout


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

    def forward(self, x, kv_cache=None):
        B, T, C = x.size()

        # calculate query, key, values for all heads in batch and move head forward to be the batch dim
        k = self.key(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = self.query(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
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
        if not self.plain and q.device.type != "cpu":
            dropout_p = self.attn_drop.p if self.training else 0.0
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
