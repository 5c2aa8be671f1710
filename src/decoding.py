"""
Greedy decoding of many prompts at once, which `run.py evaluate` uses: the same
predictions as the course's one prompt at a time with utils.sample (tests check
every layout), many times faster (results/README.md, "Speed notes").
- The vanilla model (and RoPE's) keeps each layer's keys and values in a
  KVCache, so each step computes only the new position; prompts of different
  lengths share a batch left-padded, the cache masking the padding and
  numbering positions (RoPE's angles too) from each row's own start.
- The Perceiver's bottleneck has no per-position cache: it recomputes every
  position, right-padded, each row's logits read at its own last position
  (the model is causal, so the padding after it changes nothing).
"""

from collections import defaultdict

import torch


class KVCache:
    """
    Keys and values of the positions decoded so far, per self-attention layer.
    pad (B,), if given, holds each row's number of left-padding positions, which
    its real positions never see and which do not count in its position numbers.
    """

    def __init__(self, pad=None):
        self.kv = {}
        self.length = 0  # positions already cached (the same in every layer)
        self.pad = pad
        self.mask = None  # which keys the current step's queries see, shared by the layers

    def positions(self, t):
        """Position numbers (B, t) of the next t positions of each row (padding at 0)."""
        p = torch.arange(self.length, self.length + t, device=self.pad.device)
        return (p[None, :] - self.pad[:, None]).clamp(min=0)

    def rope_angles(self, rope_cache, t):
        """RoPE's angles (attention.rotate) of the next t positions: (t, hs/2, 2), or (B, 1, t, hs/2, 2) by row."""
        if self.pad is None:
            return rope_cache[self.length:self.length + t]
        return rope_cache[self.positions(t)][:, None]

    def update(self, layer, k, v):
        """The layer's keys and values with the new positions' appended, and the new queries' mask."""
        if layer in self.kv:
            k = torch.cat([self.kv[layer][0], k], dim=2)
            v = torch.cat([self.kv[layer][1], v], dim=2)
        self.kv[layer] = (k, v)
        total = k.size(2)
        if self.mask is None or self.mask.size(-1) != total:  # once a step, not once a layer
            # the course's causal mask, its rows for the new positions
            self.mask = layer.mask[:, :, self.length:total, :total]
            if self.pad is not None:
                key = torch.arange(total, device=self.pad.device)
                real_key = key[None, :] >= self.pad[:, None]
                real_query = key[None, self.length:] >= self.pad[:, None]
                # padding positions see padding, so that no softmax row is empty (an empty row is NaN)
                self.mask = self.mask * (real_key[:, None, :] | ~real_query[:, :, None])[:, None]
        return k, v, self.mask


def forward_cached(model, idx, cache):
    """
    Logits of the last position of idx, given that the first cache.length positions
    of the sequence went through this cache before (vanilla only): GPT.forward,
    with each block's attention handed the cache.
    """
    t0, t = cache.length, idx.size(1)
    x = model.tok_emb(idx)
    if not model.rope:  # RoPE's positions are the attention's (KVCache.rope_angles)
        x = x + (model.pos_emb[:, t0:t0 + t, :] if cache.pad is None else model.pos_emb[0, cache.positions(t)])
    x = model.drop(x)
    for block in model.blocks:
        x = x + block.attn(block.ln1(x), cache)
        x = x + block.mlp(block.ln2(x))
    cache.length += t
    return model.head(model.ln_f(x[:, -1, :]))


def shift_rows(x, shift):
    """Each row of x rotated right by its shift (a LongTensor, one value a row)."""
    columns = torch.arange(x.size(1), device=x.device)
    return torch.gather(x, 1, (columns[None, :] - shift[:, None]) % x.size(1))


@torch.no_grad()
def greedy_batch(model, prompts, steps, stop_id=None, lengths=None):
    """
    Greedy completions of a batch of prompts: the same tokens as
    sample(..., sample=False) row by row, computed together. prompts is a
    LongTensor (B, T), padded at the end to T where lengths (B,) says rows are
    shorter; returns (B, T + steps or fewer): each row's prompt, its completion,
    then padding. Stops early once every row has produced stop_id (callers only
    read up to it). Padded prompts must leave room for the steps in the block.
    """
    model.eval()
    x = prompts
    B, T = x.shape
    rows = torch.arange(B, device=x.device)
    padded = lengths is not None
    lengths = torch.full((B,), T, device=x.device) if lengths is None else lengths.clone()
    assert not padded or T + steps <= model.get_block_size(), "padded prompts must fit the block"
    cached = not model.perceiver and T + steps <= model.get_block_size()
    pad = None
    if cached and padded:
        # the cache needs every row's next position in the same column: left-pad instead
        pad = T - lengths
        x = shift_rows(x, pad)
    cache = KVCache(pad) if cached else None
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        if cached:
            ix = forward_cached(model, x[:, cache.length:], cache).argmax(dim=-1)
            x = torch.cat((x, ix[:, None]), dim=1)
        else:
            x_cond = x if x.size(1) <= model.get_block_size() else x[:, -model.get_block_size():]
            logits = model(x_cond)[0]
            ix = logits[rows, lengths - 1 - (x.size(1) - x_cond.size(1))].argmax(dim=-1)
            x = torch.cat((x, torch.zeros_like(x[:, :1])), dim=1)
            x[rows, lengths] = ix
            lengths += 1
        if stop_id is not None:
            done |= ix == stop_id
            if bool(done.all()):
                break
    return x if pad is None else shift_rows(x, -pad)


def predict_places(model, prompts, itos, mask_id, steps=32, batch_size=512, bucket=None):
    """
    The completion between the first and second MASK of a greedy decode of each
    prompt (a list of id lists ending with MASK), as the course's evaluate does.
    Prompts whose lengths fall into the same bucket of `bucket` lengths share a
    batch (up to batch_size), padded. bucket=None: one bucket on a GPU (a step
    costs about the same for 1 row as for 500); on CPU 16 lengths for the vanilla
    model and exact lengths for the Perceiver, which recomputes every padded
    position (measured: results/README.md, "Speed notes"). Prompts too long to
    leave room for the steps in the block are grouped by exact length, as the
    course's cropping needs.
    """
    mask_char = itos[mask_id]
    device = next(model.parameters()).device
    if bucket is None:
        bucket = model.get_block_size() if device.type != "cpu" else 1 if model.perceiver else 16
    groups = defaultdict(list)
    for i, p in enumerate(prompts):
        padded = len(p) + steps <= model.get_block_size()
        groups[(padded, len(p) // bucket if padded else len(p))].append(i)
    predictions = [None] * len(prompts)
    for (padded, _), indices in sorted(groups.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            longest = max(len(prompts[i]) for i in chunk)
            x = torch.tensor([prompts[i] + [0] * (longest - len(prompts[i])) for i in chunk], device=device)
            lengths = torch.tensor([len(prompts[i]) for i in chunk], device=device) if padded else None
            out = greedy_batch(model, x, steps, stop_id=mask_id, lengths=lengths).tolist()
            for i, row in zip(chunk, out):
                completion = "".join(itos[int(t)] for t in row[:len(prompts[i]) + steps])
                predictions[i] = completion.split(mask_char)[1]
    return predictions
