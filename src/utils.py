"""
Sampling and evaluation helpers, as in the course code, plus the batched greedy
decoder that `run.py evaluate` uses (same predictions as one prompt at a time).
"""

import os
import random
import tempfile
from collections import defaultdict

import numpy as np
import torch
from torch.nn import functional as F

from attention import KVCache


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def top_k_logits(logits, k):
    v, ix = torch.topk(logits, k)
    out = logits.clone()
    out[out < v[:, [-1]]] = -float("Inf")
    return out


@torch.no_grad()
def sample(model, x, steps, temperature=1.0, sample=False, top_k=None):
    """
    take a conditioning sequence of indices in x (of shape (b,t)) and predict the next token in
    the sequence, feeding the predictions back into the model each time. Clearly the sampling
    has quadratic complexity unlike an RNN that is only linear, and has a finite context window
    of block_size, unlike an RNN that has an infinite context window.
    """
    block_size = model.get_block_size()
    model.eval()
    for k in range(steps):
        x_cond = x if x.size(1) <= block_size else x[:, -block_size:]  # crop context if needed
        logits, _ = model(x_cond)
        # pluck the logits at the final step and scale by temperature
        logits = logits[:, -1, :] / temperature
        # optionally crop probabilities to only the top k options
        if top_k is not None:
            logits = top_k_logits(logits, top_k)
        # apply softmax to convert to probabilities
        probs = F.softmax(logits, dim=-1)
        # sample from the distribution or take the most likely
        if sample:
            ix = torch.multinomial(probs, num_samples=1)
        else:
            _, ix = torch.topk(probs, k=1, dim=-1)
        # append to the sequence and continue
        x = torch.cat((x, ix), dim=1)

    return x


@torch.no_grad()
def greedy_batch(model, prompts, steps, stop_id=None, pad=None):
    """
    Greedy completions of a batch of prompts (a LongTensor (B, T)): the same
    tokens as sample(..., sample=False) row by row, computed together. The vanilla
    model reuses keys and values through a cache, and then takes prompts of
    different lengths left-padded (pad: each row's padding positions); the
    Perceiver recomputes, and its prompts must be equally long. Stops early once
    every row has produced stop_id (callers only read up to it).
    """
    model.eval()
    x = prompts
    cached = not model.perceiver and prompts.size(1) + steps <= model.get_block_size()
    assert cached or pad is None, "only the cached decoder takes padded prompts"
    cache = KVCache(pad) if cached else None
    done = torch.zeros(x.size(0), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        if cached:
            logits = model.forward_cached(x[:, cache.length:], cache)
        else:
            x_cond = x if x.size(1) <= model.get_block_size() else x[:, -model.get_block_size():]
            logits = model(x_cond)[0][:, -1, :]
        ix = logits.argmax(dim=-1, keepdim=True)
        x = torch.cat((x, ix), dim=1)
        if stop_id is not None:
            done |= ix[:, 0] == stop_id
            if bool(done.all()):
                break
    return x


def predict_places(model, prompts, itos, mask_id, steps=32, batch_size=512):
    """
    The completion between the first and second MASK of a greedy decode of each
    prompt (a list of id lists ending with MASK), as the course's evaluate does.
    The vanilla model decodes up to batch_size prompts at once, left-padded (on a
    GPU each decoding step costs the same for 1 row as for 500, so fewer, fuller
    batches are faster); the Perceiver, whose bottleneck sees absolute positions,
    decodes prompts grouped by length.
    """
    mask_char = itos[mask_id]
    device = next(model.parameters()).device
    groups = defaultdict(list)
    for i, p in enumerate(prompts):
        padded = not model.perceiver and len(p) + steps <= model.get_block_size()
        groups[0 if padded else len(p)].append(i)
    predictions = [None] * len(prompts)
    for length, indices in sorted(groups.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            longest = max(len(prompts[i]) for i in chunk)
            pad = [longest - len(prompts[i]) for i in chunk]
            x = torch.tensor([[0] * n + prompts[i] for n, i in zip(pad, chunk)], dtype=torch.long, device=device)
            out = greedy_batch(model, x, steps, stop_id=mask_id,
                               pad=torch.tensor(pad, device=device) if length == 0 else None).tolist()
            for i, n, row in zip(chunk, pad, out):
                completion = "".join(itos[int(t)] for t in row[n:n + len(prompts[i]) + steps])
                predictions[i] = completion.split(mask_char)[1]
    return predictions


def read_questions(filepath):
    """
    [(line number, question, answer or None)] of the non-blank lines of a
    birth-place file. Either every line has one tab (question<TAB>answer) or none
    has (questions only); anything else is a ValueError naming file and line.
    """
    with open(filepath, encoding="utf-8") as fin:
        text = fin.read()
    rows = []
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) > 2:
            raise ValueError(f"{filepath}:{n}: {len(parts) - 1} tabs, expected at most one: {line[:60]!r}")
        if rows and (len(parts) == 2) != (rows[0][2] is not None):
            raise ValueError(f"{filepath}:{n}: line {'has' if len(parts) == 2 else 'lacks'} a tab but line "
                             f"{rows[0][0]} {'lacks' if len(parts) == 2 else 'has'} one: {line[:60]!r}")
        if len(parts) == 2 and not parts[1].strip():
            raise ValueError(f"{filepath}:{n}: empty answer: {line[:60]!r}")
        rows.append((n, parts[0], parts[1] if len(parts) == 2 else None))
    return rows


def evaluate_places(filepath, predicted_places):
    """ Computes percent of correctly predicted birth places.

    Arguments:
      filepath: path to a file with our name, birth place data.
      predicted_places: a list of strings representing the
          predicted birth place of each person.

    Returns: (total, correct), floats
    """
    rows = read_questions(filepath)
    if not rows or rows[0][2] is None:
        print("No gold birth places provided; returning (0,0)")
        return (0, 0)
    true_places = [answer for _, _, answer in rows]
    total = len(true_places)
    if total != len(predicted_places):
        raise ValueError(f"{filepath}: {total} answers but {len(predicted_places)} predictions")
    correct = len(list(filter(lambda x: x[0] == x[1], zip(true_places, predicted_places))))
    return (float(total), float(correct))


def atomic_write(path, write, mode="w"):
    """
    Call write(file) on a temporary file beside path, then rename it over path,
    so a crash never leaves a half-written file where a good one was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
