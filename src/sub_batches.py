"""
Padding-aware sub-batches, the CPU's training speed-up: about half of a
pretraining row is padding, which the loss ignores. The rows of a batch are
sorted by the position of their last real target and cut into a few
sub-batches, each trimmed to its own longest row. Exact up to float rounding:
the model is causal, so logits before the cut do not change, and the trainer
weights each sub-batch's loss by its share of the batch's real targets, so the
accumulated gradient is the whole batch's. How many sub-batches: hardware.py.
"""

import torch


def target_lengths(y):
    """1 + position of the last real (non-PAD) target of each row; 0 for a row without one."""
    positions = torch.arange(1, y.size(1) + 1, device=y.device)
    return ((y != 0) * positions).amax(dim=1)


def split_by_length(x, y, n):
    """
    Sort the rows by target length and cut them into at most n sub-batches, each
    trimmed to its longest row rounded up to a multiple of 16. Returns
    [(x_i, y_i, real_targets_i)]; rows without any real target are dropped (they
    add nothing to the loss).
    """
    lengths = target_lengths(y)
    order = torch.argsort(lengths)
    lengths = lengths[order].tolist()
    x, y = x[order], y[order]
    first = next((i for i, length in enumerate(lengths) if length > 0), len(lengths))
    rows = len(lengths) - first
    parts = []
    for k in range(n):
        lo, hi = first + rows * k // n, first + rows * (k + 1) // n
        if hi > lo:
            # a multiple of 16: eight sizes reused instead of a new one every step, which
            # fragmented glibc's heap (results/README.md, "Speed notes")
            t = min(y.size(1), -(-lengths[hi - 1] // 16) * 16)
            yk = y[lo:hi, :t]
            parts.append((x[lo:hi, :t], yk, int((yk != 0).sum())))
    return parts


def weighted_parts(x, y, n):
    """
    [(x_i, y_i, share_i)]: n > 1 sub-batches, each with its share of the batch's real
    targets, so that the shares' weighted losses sum to the batch's mean loss; n = 1:
    the batch itself, share 1, with no host read of the row lengths (a GPU need not wait).
    """
    if n == 1:
        return [(x, y, 1.0)]
    parts = split_by_length(x, y, n)
    total = sum(count for _, _, count in parts)
    return [(xk, yk, count / total) for xk, yk, count in parts]
