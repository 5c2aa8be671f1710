"""device_batches.DeviceBatches: span corruption of a whole batch with torch.

It is split in two steps, tested apart: draw (the random n, masked_len, start of
each row) and assemble (the rows, given those). assemble must reproduce
__getitem__ exactly from __getitem__'s own draws; draw must have the exact
distribution of __getitem__'s nested random.randint draws.
"""

import itertools
import math
import os
import random
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dataset
from dataset import MASK_CHAR, PAD_CHAR, CharCorruptionDataset
from device_batches import DeviceBatches

from conftest import ROOT, needs_cuda

EDGE_TEXT = "\n".join(["", "a", "ab", "abc", "abcd", "abcde", "hello world", "x" * 300,
                       "The quick brown fox jumps over the lazy dog. " * 4])


def bundled_text():
    with open(os.path.join(ROOT, "data", "wiki.txt"), encoding="utf-8") as f:
        return f.read()


class RecordingRandom:
    """Stands for the random module in dataset: randint as Python's, each call's (a, b, value) kept."""

    def __init__(self, choose=None):
        self.calls, self.choose = [], choose

    def randint(self, a, b):
        value = random.randint(a, b) if self.choose is None else self.choose(len(self.calls), a, b)
        self.calls.append((a, b, value))
        return value


def getitem_with_draws(ds, i, monkeypatch, choose=None):
    """(x, y, (n, masked_len, start)) of ds[i], the draws being the ones __getitem__ made."""
    rec = RecordingRandom(choose)
    with monkeypatch.context() as m:
        m.setattr(dataset, "random", rec)
        x, y = ds[i]
    # truncation first, then masked_len (not drawn for an empty truncation), then start
    assert len(rec.calls) in (2, 3)
    n = len(ds.data[i][:rec.calls[0][2]])
    masked_len = rec.calls[1][2] if len(rec.calls) == 3 else 0
    return x, y, (n, masked_len, rec.calls[-1][2])


def assemble(ds, rows, draws):
    n, masked_len, start = (torch.tensor(v) for v in zip(*draws))
    return DeviceBatches(ds).assemble(torch.tensor(rows), n, masked_len, start)


@pytest.mark.parametrize("corpus,block_size", [
    ("bundled", 128), ("bundled", 16), ("edge", 128), ("edge", 8), ("edge", 5),
    ("edge", 4), ("edge", 3), ("edge", 2), ("edge", 1)])
def test_assembly_reproduces_getitem_from_its_draws(corpus, block_size, monkeypatch):
    ds = CharCorruptionDataset(bundled_text() if corpus == "bundled" else EDGE_TEXT, block_size)
    random.seed(block_size)
    rows = [i for i in range(len(ds)) for _ in range(400 // len(ds) + 3)]
    xs, ys, draws = zip(*(getitem_with_draws(ds, i, monkeypatch) for i in rows))
    x, y = assemble(ds, rows, draws)
    assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (len(rows), block_size)
    assert torch.equal(x, torch.stack(xs)) and torch.equal(y, torch.stack(ys))


@pytest.mark.parametrize("block_size", [128, 8, 5, 2, 1])
def test_draws_reach_exactly_getitem_bounds(block_size, monkeypatch):
    # u = 0 and the largest u < 1 must give the lowest and highest value of each randint range of
    # __getitem__; together with floor(u * count) + low being uniform this makes the draws exact
    ds = CharCorruptionDataset(EDGE_TEXT, block_size)
    rows = list(range(len(ds)))
    for ends in itertools.product([0, 1], repeat=3):
        # __getitem__ with each randint giving one end of its range (truncation, masked_len, start)
        def choose(k, a, b):
            return b if ends[0 if k == 0 else 1 if a == 1 else 2] else a
        xs, ys, _ = zip(*(getitem_with_draws(ds, i, monkeypatch, choose) for i in rows))
        u = torch.tensor([1 - 2.0 ** -53 if e else 0.0 for e in ends], dtype=torch.float64)
        with monkeypatch.context() as m:
            m.setattr(torch, "rand", lambda *shape, **kw: u[:, None].expand(shape).to(kw["device"]))
            x, y = DeviceBatches(ds)(torch.tensor(rows))
        assert torch.equal(x, torch.stack(xs)) and torch.equal(y, torch.stack(ys)), ends


def exact_distribution(doc_len, block_size):
    """{(n, masked_len, start): probability} of __getitem__, by enumeration of its randint ranges."""
    max_len = min(int(block_size * 7 / 8), block_size - 1)
    cuts = range(min(4, max_len), max_len + 1)
    p = defaultdict(float)
    for cut in cuts:
        n = min(doc_len, cut)
        masked = range(1, max(1, round(n / 2) - 1) + 1) if n > 0 else [0]
        for m in masked:
            for s in range(n - m + 1):
                p[n, m, s] += 1 / len(cuts) / len(masked) / (n - m + 1)
    return p


def draws_of_rows(x, y):
    """(n, masked_len, start) read back from rows: first MASK at start, second at n - masked_len + 1."""
    string = torch.cat([x[:, :1], y], dim=1)
    j = torch.arange(string.shape[1])
    is_mask = string == 1
    start = torch.where(is_mask, j, string.shape[1]).min(dim=1).values
    second = torch.where(is_mask, j, -1).max(dim=1).values
    n = (string != 0).sum(dim=1) - 2
    return n, n + 1 - second, start


def chi_square_check(p, samples, key):
    """Chi-square test of the samples' key against p's, consecutive keys merged to >= 5 expected."""
    exact = defaultdict(float)
    for cell, q in p.items():
        exact[key(cell)] += q
    total = len(samples)
    observed = defaultdict(int)
    for cell in samples:
        observed[key(cell)] += 1
    assert set(observed) <= set(exact), "a value out of __getitem__'s ranges was drawn"
    bins_e, bins_o, e, o = [], [], 0.0, 0
    for k in sorted(exact):
        e, o = e + exact[k] * total, o + observed[k]
        if e >= 5:
            bins_e.append(e), bins_o.append(o)
            e, o = 0.0, 0
    if bins_e:
        bins_e[-1] += e
        bins_o[-1] += o
    else:
        bins_e, bins_o = [e], [o]
    if len(bins_e) == 1:
        # one value holds (nearly) all the probability, too little is left to bin: each value's
        # count within 5 standard deviations of its expectation (for a certain value: all samples)
        for k, q in exact.items():
            assert abs(observed[k] - q * total) <= 5 * math.sqrt(max(0.0, q * (1 - q)) * total) + 1e-6 * total, \
                (k, observed[k], q * total)
        return
    e, o = np.array(bins_e), np.array(bins_o)
    stat, df = float(((o - e) ** 2 / e).sum()), len(e) - 1
    # Wilson-Hilferty quantile of chi-square(df) at z = 5 (p about 3e-7): a conservative bound
    bound = df * (1 - 2 / (9 * df) + 5 * math.sqrt(2 / (9 * df))) ** 3
    assert stat < bound, (stat, df, bound)


@pytest.mark.parametrize("doc_len,block_size", [
    (3, 128), (10, 128), (200, 128), (0, 128), (3, 8), (10, 8), (200, 8), (10, 5), (10, 2)])
def test_draws_have_getitem_distribution(doc_len, block_size):
    doc = ("abcdefghijklmnopqrstuvwxyz" * 10)[:doc_len]
    ds = CharCorruptionDataset(doc, block_size)
    torch.manual_seed(doc_len * 1000 + block_size)
    x, y = DeviceBatches(ds)(torch.zeros(30000, dtype=torch.long))
    samples = list(zip(*(t.tolist() for t in draws_of_rows(x, y))))
    p = exact_distribution(doc_len, block_size)
    assert abs(sum(p.values()) - 1) < 1e-9
    for key in (lambda c: c, lambda c: c[0], lambda c: c[1], lambda c: c[2], lambda c: c[:2],
                lambda c: (c[0], c[0] - c[1] - c[2])):  # the last: suffix length
        chi_square_check(p, samples, key)


def test_chi_square_check_catches_an_off_by_one():
    # the check has power: n // 2 in place of round(n / 2), or start never at its highest, fail it
    p = exact_distribution(200, 128)
    rng = random.Random(0)
    for bug in ("floor", "start"):
        samples = []
        for _ in range(30000):
            n = rng.randint(4, 112)
            m = rng.randint(1, max(1, (n // 2 if bug == "floor" else round(n / 2)) - 1))
            samples.append((n, m, rng.randint(0, n - m - (bug == "start"))))
        with pytest.raises(AssertionError):
            for key in (lambda c: c, lambda c: c[:2], lambda c: (c[0], c[0] - c[1] - c[2])):
                chi_square_check(p, samples, key)
    # and where one bin holds everything: a rare value (3 expected) drawn 100 times
    rare = {(0, 0, 0): 0.9999, (0, 0, 1): 0.0001}
    chi_square_check(rare, [(0, 0, 0)] * 29997 + [(0, 0, 1)] * 3, lambda c: c)
    with pytest.raises(AssertionError):
        chi_square_check(rare, [(0, 0, 0)] * 29900 + [(0, 0, 1)] * 100, lambda c: c)


class CountOps(TorchDispatchMode):
    """The number of aten operations run inside the block."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def test_batch_is_a_few_tensor_operations_and_reproducible():
    """
    What makes a batch fast, counted rather than timed (a timing ratio fails on a loaded machine):
    the same few tensor operations for 8 rows as for 4096, no loop over rows.
    """
    ds = CharCorruptionDataset(bundled_text(), 128)
    idx = torch.randint(len(ds), (4096,))
    batches = DeviceBatches(ds)
    batches(idx[:8])  # builds the documents' tensor once
    counts = []
    for rows in (idx[:8], idx):
        with CountOps() as count:
            batches(rows)
        counts.append(count.ops)
    assert counts[0] == counts[1] > 0, counts

    torch.manual_seed(1)
    state = random.getstate()
    x, y = batches(idx)
    assert random.getstate() == state, "Python's random generator must not be used"
    assert x.device == y.device == idx.device and x.dtype == y.dtype == torch.long
    assert x.shape == y.shape == (4096, 128) and torch.equal(x[:, 1:], y[:, :-1])
    torch.manual_seed(1)
    x2, y2 = DeviceBatches(ds)(idx)
    assert torch.equal(x, x2) and torch.equal(y, y2), "torch's seed must fix the batch"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_batch_rows_within_getitem_ranges_without_host_synchronisation(device):
    """
    Every row of a batch made on the device has __getitem__'s form for its own document, and on
    a GPU making it never waits for the device. The corpus has an empty and a 2-character
    document (its last lines): their rows are shorter than 4, as __getitem__'s.
    """
    ds = CharCorruptionDataset(bundled_text(), 128)
    doc_len = torch.tensor([len(d) for d in ds.data])
    assert (doc_len < 4).any(), "the corpus must keep a short document for this test to see it"
    idx = torch.cat([torch.nonzero(doc_len < 4).flatten(), torch.randint(len(ds), (512,))]).to(device)
    batches = DeviceBatches(ds)
    batches(idx)  # builds the documents' tensor on the device
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        x, y = batches(idx)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert x.device == y.device == idx.device and x.shape == (len(idx), 128)
    n, masked_len, start = draws_of_rows(x.cpu(), y.cpu())
    length = doc_len[idx.cpu()]
    assert ((torch.minimum(length, torch.tensor(4)) <= n) & (n <= torch.minimum(length, torch.tensor(112)))).all()
    assert ((masked_len >= 1) | (n == 0)).all() and (start <= n - masked_len).all()
    for row, i, k in zip(x.cpu(), idx.cpu().tolist(), n.tolist()):
        # a row shows the first n characters of its own document, rearranged, and MASKs and PADs
        shown = decode(ds, row).replace(dataset.MASK_CHAR, "").replace(dataset.PAD_CHAR, "")
        assert sorted(shown) == sorted(ds.data[i][:k]), (shown, ds.data[i])


def decode(ds, t):
    return "".join(ds.itos[i] for i in t.tolist())


def test_course_data_rows_have_getitem_form(wiki_text):
    ds = CharCorruptionDataset(wiki_text, 128)
    torch.manual_seed(0)
    idx = torch.arange(len(ds)).repeat(2)
    x, y = DeviceBatches(ds)(idx)
    ratios = []
    for i, xi, yi in zip(idx.tolist(), x, y):
        s = decode(ds, torch.cat([xi[:1], yi]))
        body = s.rstrip(PAD_CHAR)
        assert len(s) == 129 and PAD_CHAR not in body and body.count(MASK_CHAR) == 2, s
        prefix, suffix, content = body.split(MASK_CHAR)
        n = len(prefix + suffix + content)
        assert prefix + content + suffix == ds.data[i][:n], s
        assert min(4, len(ds.data[i])) <= n <= 112 and (n == 0 or 1 <= len(content) <= max(1, n // 2))
        if n >= 8:
            ratios.append(len(content) / n)
    assert 0.2 < sum(ratios) / len(ratios) < 0.3  # the masked span averages 1/4 of the truncation
