"""
Pretraining batches made on the training device: CharCorruptionDataset's span
corruption of a whole batch in a few tensor operations, drawn from the same
distribution as its __getitem__ (tests/test_corruption.py checks the assembly
exactly and the draws against enumeration), with torch's generator instead of
Python's. Why: a GPU's pretraining step takes milliseconds, and 128 calls of
__getitem__ a few more of a CPU core (results/README.md, "Speed notes").
No loop over rows and no host synchronisation once the documents are there.
"""

import torch

from dataset import MASK_CHAR, PAD_CHAR


class DeviceBatches:
    """batches(idx) = x, y of the rows idx (a LongTensor), made on idx's device."""

    def __init__(self, dataset):
        self.dataset = dataset
        # lengths 4 .. 7/8 of a block, as __getitem__
        self.max_len = min(int(dataset.block_size * 7 / 8), dataset.block_size - 1)
        self.documents = {}  # device -> (ids, lengths) of the documents

    def __call__(self, idx):
        return self.assemble(idx, *self.draw(idx))

    def draw(self, idx):
        """__getitem__'s random quantities for the rows idx: n = len(truncated), masked_len, start."""
        _, doc_len = self.documents_on(idx.device)
        # float64: floor(u * count) must stay below count and give each integer the same chance;
        # a float32 u has only 24 bits and is one rounding away from count (in float32,
        # (1 - 2**-24) * 113 + 16 rounds up to 129.0), a float64 u has 53
        u = torch.rand(3, len(idx), dtype=torch.float64, device=idx.device)

        def randint(u, low, high):  # random.randint(low, high), high may differ per row
            return (u * (high - low + 1)).floor().long() + low

        n = torch.minimum(randint(u[0], min(4, self.max_len), self.max_len), doc_len[idx])
        # torch.round rounds half to even, as Python's round does (n / 2 is exact)
        masked_len = randint(u[1], 1, (torch.round(n / 2) - 1).long().clamp(min=1))
        masked_len = torch.where(n > 0, masked_len, 0)  # an empty document masks nothing
        start = randint(u[2], 0, n - masked_len)
        return n, masked_len, start

    def assemble(self, idx, n, masked_len, start):
        """x, y of the rows idx, given __getitem__'s n, masked_len and start (one value a row): no randomness."""
        doc_ids, _ = self.documents_on(idx.device)
        stoi = self.dataset.stoi
        # masked_string = prefix MASK suffix MASK masked_content PAD...: for each position j,
        # which character of the document it shows (prefix, suffix or content), or MASK or PAD
        j = torch.arange(self.dataset.block_size + 1, device=idx.device)
        n, masked_len, start = n[:, None], masked_len[:, None], start[:, None]
        second_mask = n - masked_len + 1
        src = torch.where(j < start, j,                                        # prefix
                          torch.where(j < second_mask, j - 1 + masked_len,     # suffix
                                      j - second_mask - 1 + start))            # masked content
        chars = doc_ids[idx[:, None], src.clamp(0, doc_ids.shape[1] - 1)]  # off-document j: MASK or PAD
        is_mask = (j == start) | (j == second_mask)
        string = torch.where(is_mask, stoi[MASK_CHAR], torch.where(j > n + 1, stoi[PAD_CHAR], chars))
        return string[:, :-1].contiguous(), string[:, 1:].contiguous()

    def documents_on(self, device):
        """(ids, lengths) of the documents, padded with PAD, on device; built once per device.
        A row never shows more than the first max_len characters of its document, so only
        those are kept (at least one column, so that tiny blocks can still index it)."""
        if device not in self.documents:
            width = max(self.max_len, 1)
            stoi = self.dataset.stoi
            docs = [document[:width] for document in self.dataset.data]
            ids = torch.tensor([[stoi[c] for c in d] + [stoi[PAD_CHAR]] * (width - len(d)) for d in docs],
                               dtype=torch.long)
            lengths = torch.tensor([len(d) for d in docs], dtype=torch.long)
            self.documents[device] = ids.to(device), lengths.to(device)
        return self.documents[device]
