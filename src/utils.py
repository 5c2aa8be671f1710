"""
Sampling and evaluation helpers, as in the course code, plus the batched greedy
decoder that `run.py evaluate` uses (same predictions as one prompt at a time).
"""

import io
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
        # the vanilla model reuses keys and values through a cache, which needs every row's next
        # position in the same column: its prompts are left-padded instead, and the cache told so
        pad = T - lengths
        x = shift_rows(x, pad)
    cache = KVCache(pad) if cached else None
    done = torch.zeros(B, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        if cached:
            ix = model.forward_cached(x[:, cache.length:], cache).argmax(dim=-1)
            x = torch.cat((x, ix[:, None]), dim=1)
        else:
            # the Perceiver recomputes every position; the model is causal, so a row's logits at
            # its last real position do not depend on the padding after it
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
    batch (up to batch_size), padded. bucket=None: on a GPU one bucket, since a
    decoding step costs about the same for 1 row as for 500; on CPU 16 lengths
    for the vanilla model (a trained model's 500 dev questions in 1.8 s, against
    2.7 s by exact length and 3.6 s all in one batch, where every row waits for
    the slowest; a fresh process's first decode, mostly kernel set-up, 2.4-2.6 s
    against 2.6-2.7 s), exact lengths for the Perceiver, which recomputes every
    padded position (38 s against 45 s in buckets of 4-8). Prompts too long to
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


def save_atomic(obj, path):
    """torch.save(obj, path) through atomic_write. Serialized in memory first: torch.save's own
    writer turns a failed write (a full disk) into an unrelated error at its end."""
    data = io.BytesIO()
    torch.save(obj, data)
    atomic_write(path, lambda f: f.write(data.getbuffer()), mode="wb")


def atomic_write(path, write, mode="w"):
    """
    Call write(file) on a temporary file beside path, then rename it over path,
    so a crash never leaves a half-written file where a good one was, and a
    failed write (a full disk) leaves no temporary file behind. An OSError
    names path.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if hasattr(os, "O_DIRECTORY"):  # the rename itself survives a power cut only once the folder is synced
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
