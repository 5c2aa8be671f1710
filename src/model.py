"""
GPT model, as in the course's minGPT fork:
- the initial stem: a token embedding plus a learned position embedding (or, with
  config.rope, the 2024-25 course's variant, none: attention rotates q and k by position)
- a stack of Transformer blocks (or, for the Perceiver variant, a DownProjectBlock,
  blocks on the bottleneck, and an UpProjectBlock)
- a final LayerNorm and a linear decoder to the vocabulary

Parameter names and shapes match the course code, so params files are interchangeable.
"""

import torch
import torch.nn as nn
from torch.nn import functional as F

from attention import CausalCrossAttention, CausalSelfAttention
from fast_dropout import dropout


class GPTConfig:
    """ base GPT config, params common to all GPT versions """
    embd_pdrop = 0.1
    resid_pdrop = 0.1
    attn_pdrop = 0.1
    perceiver = False
    bottleneck_dim = None
    rope = False  # the 2024-25 course's rotary position embeddings instead of pos_emb
    plain = False  # True: the course's computation (explicit attention, nn.Dropout), for comparison
    attention = "auto"  # where SDPA computes attention (attention.py): auto, sdpa or explicit

    def __init__(self, vocab_size, block_size, **kwargs):
        self.vocab_size = vocab_size
        self.block_size = block_size
        for k, v in kwargs.items():
            setattr(self, k, v)


def _mlp(config):
    return nn.Sequential(
        nn.Linear(config.n_embd, 4 * config.n_embd),
        nn.GELU(),  # exact erf GELU, as in the course
        nn.Linear(4 * config.n_embd, config.n_embd),
        dropout(config.resid_pdrop, config),
    )


class Block(nn.Module):
    """ an unassuming Transformer block """

    def __init__(self, config):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.mlp = _mlp(config)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return x


class DownProjectBlock(nn.Module):
    """
    Perceiver down-projection: a learned basis C (m x d) cross-attends to the
    input sequence, shrinking it from block_size positions to m.
    """

    def __init__(self, config):
        super().__init__()
        self.C = nn.Parameter(torch.empty(1, config.bottleneck_dim, config.n_embd))
        nn.init.xavier_uniform_(self.C)
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = CausalCrossAttention(config)
        self.mlp = _mlp(config)

    def forward(self, x_input):
        x = self.C + self.attn(x_kv=x_input, x_q=self.ln1(self.C))
        x = x + self.mlp(self.ln2(x))
        return x


class UpProjectBlock(nn.Module):
    """
    Perceiver up-projection: the input sequence cross-attends to the bottleneck,
    bringing the length back from m to the input's.
    """

    def __init__(self, config):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = CausalCrossAttention(config)
        self.mlp = _mlp(config)

    def forward(self, y, x_input):
        x = x_input + self.attn(x_kv=self.ln1(y), x_q=x_input)
        x = x + self.mlp(self.ln2(x))
        return x


class GPT(nn.Module):
    """  the full GPT language model, with a context size of block_size """

    def __init__(self, config):
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.rope = getattr(config, "rope", False)
        assert not (self.rope and config.perceiver), "RoPE is the 2024 course's vanilla model's, not the Perceiver's"
        if not self.rope:
            self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.drop = dropout(config.embd_pdrop, config)

        self.perceiver = config.perceiver
        if config.perceiver:
            input_block_size = config.block_size
            self.down_block = DownProjectBlock(config)
            # the middle blocks run on the bottleneck, so their masks are m x m
            config.block_size = config.bottleneck_dim
            self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer - 2)])
            config.block_size = input_block_size
            self.up_block = UpProjectBlock(config)
        else:
            self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])

        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

        self.block_size = config.block_size
        self.apply(self._init_weights)

    def get_block_size(self):
        return self.block_size

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.block_size, "Cannot forward, model block size (%d, %d) is exhausted." % (t, self.block_size)

        # forward the GPT model
        token_embeddings = self.tok_emb(idx)  # each index maps to a (learnable) vector
        if self.rope:
            x_input = self.drop(token_embeddings)  # positions enter as rotations of q and k
        else:
            position_embeddings = self.pos_emb[:, :t, :]  # each position maps to a (learnable) vector
            x_input = self.drop(token_embeddings + position_embeddings)

        if self.perceiver:
            x = self.down_block(x_input)
        else:
            x = x_input
        x = self.blocks(x)
        if self.perceiver:
            x = self.up_block(x, x_input)

        x = self.ln_f(x)
        logits = self.head(x)

        # if we are given some desired targets also calculate the loss
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=0)

        return logits, loss
