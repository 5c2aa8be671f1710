"""
Sampling and evaluation helpers, as in the course code (the batched decoder that
`run.py evaluate` uses is decoding.py), and writing files atomically.
"""

import io
import os
import random
import stat
import tempfile

import numpy as np
import torch
from torch.nn import functional as F

from inputs import read_questions


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


def evaluate_places(filepath, predicted_places):
    """ Computes percent of correctly predicted birth places.

    Arguments:
      filepath: path to a file with our name, birth place data.
      predicted_places: a list of strings representing the
          predicted birth place of each person.

    Returns: (total, correct), floats

    As in the course's, which strips each line, a gold answer's trailing whitespace does not count.
    """
    rows = read_questions(filepath)
    if not rows or rows[0][2] is None:
        print("No gold birth places provided; returning (0,0)")
        return (0, 0)
    true_places = [answer.rstrip() for _, _, answer in rows]
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
    failed write (a full disk) leaves no temporary file behind. A link is
    written through: its target is replaced (the temporary file beside the
    target), so a link into Google Drive stays a link. A device or a FIFO is
    written in place: replaced, /dev/null would become a file. The file keeps
    its permission bits; a new one gets 0666 less the umask, as open() gives
    (mkstemp's are 0600). An OSError names path.
    """
    encoding = {"encoding": "utf-8"} if "b" not in mode else {}
    tmp = None
    try:
        try:  # through links, as open() follows them (also /dev/stdout's into /proc, which realpath cannot)
            old = os.stat(path)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            with open(path, mode, **encoding) as f:
                write(f)
            return
        target = os.path.realpath(path)
        folder = os.path.dirname(target)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(target) + ".", suffix=".tmp")
        os.chmod(tmp, stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~umask())
        with os.fdopen(fd, mode, **encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        tmp = None
        sync_folder(folder)
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def umask():
    """This process's umask: reading it means setting it, so set it straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sync_folder(folder):
    """
    Make a rename in folder survive a power cut. Best effort: some file systems (network
    and FUSE mounts such as Colab's Drive) refuse to sync a folder, and the file itself
    is already synced by then.
    """
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
