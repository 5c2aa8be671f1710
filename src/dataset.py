"""
The two datasets of the assignment:
- CharCorruptionDataset: span corruption of one-line documents, for pretraining.
  It also defines the vocabulary.
- NameDataset: "Where was <name> born?<TAB><place>" lines, for finetuning.

Importing this module reads no file and prints nothing (an autograder imports it).
Bad input raises ValueError("line N: problem"); callers add the file name.
"""

import argparse
import random

import torch
from torch.utils.data import Dataset

PAD_CHAR = u"\u25A1"   # empty square: padding, id 0, ignored by the loss
MASK_CHAR = u"\u2047"  # double question mark: marks the corrupted span, id 1


def lines_of(data):
    """(line number, text) of each non-blank line, line endings (LF or CRLF) stripped."""
    for n, line in enumerate(data.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield n, line


def encode(stoi, text, where="text"):
    """Vocabulary ids of text; a character the vocabulary lacks is a clear error."""
    try:
        return [stoi[c] for c in text]
    except KeyError as e:
        raise ValueError(f"{where}: character {e.args[0]!r} (U+{ord(e.args[0]):04X}) is not in the "
                         f"vocabulary of the pretraining corpus") from None


class NameDataset(Dataset):
    """
    Finetuning rows: x = question MASK answer MASK PADs (minus its last character),
    y = PAD for the question's positions, then the opening MASK, the answer, the
    closing MASK and PADs, so only the answer (and its MASKs) is predicted.
    x and y are block_size - 1 long, as in the course code.
    """

    def __init__(self, pretraining_dataset, data):
        self.MASK_CHAR = pretraining_dataset.MASK_CHAR
        self.PAD_CHAR = pretraining_dataset.PAD_CHAR
        self.itos = pretraining_dataset.itos
        self.stoi = pretraining_dataset.stoi
        self.block_size = pretraining_dataset.block_size
        self.data = []  # (question, answer) pairs
        for n, line in lines_of(data):
            parts = line.split("\t")
            if len(parts) != 2:
                what = "no tab" if len(parts) == 1 else f"{len(parts) - 1} tabs"
                raise ValueError(f"line {n}: expected 'question<TAB>answer', found {what}: {line[:60]!r}")
            question, answer = parts
            if not question.strip() or not answer.strip():
                raise ValueError(f"line {n}: empty {'question' if not question.strip() else 'answer'}: {line[:60]!r}")
            encode(self.stoi, line.replace("\t", ""), f"line {n}")
            if len(question) + len(answer) + 2 > self.block_size:
                raise ValueError(f"line {n}: question and answer are {len(question) + len(answer)} characters, "
                                 f"more than block_size - 2 = {self.block_size - 2}")
            self.data.append((question, answer))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, idx):
        inp, oup = self.data[idx]
        x = inp + self.MASK_CHAR + oup + self.MASK_CHAR
        x = x + self.PAD_CHAR * (self.block_size - len(x))
        y = self.PAD_CHAR * (len(inp) - 1) + x[len(inp):]

        x = x[:-1]
        x = torch.tensor([self.stoi[c] for c in x], dtype=torch.long)
        y = torch.tensor([self.stoi[c] for c in y], dtype=torch.long)
        return x, y


class CharCorruptionDataset(Dataset):
    """
    Pretraining rows by simplified span corruption of one document:
    1. take the document self.data[idx];
    2. truncate it to a random length, uniform on 4 .. int(block_size * 7/8)
       (a shorter document stays as it is);
    3. cut the truncated document into prefix + masked_content + suffix, with the
       masked content's length random, averaging 1/4 of the truncated length;
    4. masked_string = prefix MASK suffix MASK masked_content PAD..., exactly
       block_size + 1 characters;
    5. x = masked_string[:-1], y = masked_string[1:].
    Vocabulary: id 0 = PAD, id 1 = MASK, then the sorted distinct characters of data.
    """

    def __init__(self, data, block_size):
        self.MASK_CHAR = MASK_CHAR
        self.PAD_CHAR = PAD_CHAR

        chars = sorted(list(set(data)))
        for special, name in ((PAD_CHAR, "PAD"), (MASK_CHAR, "MASK")):
            if special in chars:
                n = data[:data.index(special)].count("\n") + 1
                raise ValueError(f"line {n}: the corpus contains the reserved {name} character {special!r}")
        chars.insert(0, MASK_CHAR)
        chars.insert(0, PAD_CHAR)

        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.itos = {i: ch for i, ch in enumerate(chars)}

        self.block_size = block_size
        self.vocab_size = len(chars)
        self.data = data.split("\n")
        self._documents = {}  # device -> (ids, lengths) of the documents, for corrupt_batch

    def __len__(self):
        return len(self.data)

    def __getitem__(self, idx):
        document = self.data[idx]

        # lengths 4 .. 7/8 of a block, so that the two MASKs always fit; tiny blocks clamp
        max_len = min(int(self.block_size * 7 / 8), self.block_size - 1)
        truncated = document[:random.randint(min(4, max_len), max_len)]
        n = len(truncated)

        # uniform on 1 .. n/2 - 1 has mean n/4 (n >= 4); very short documents mask one character
        masked_len = random.randint(1, max(1, round(n / 2) - 1)) if n > 0 else 0
        start = random.randint(0, n - masked_len)
        prefix = truncated[:start]
        masked_content = truncated[start:start + masked_len]
        suffix = truncated[start + masked_len:]

        masked_string = prefix + MASK_CHAR + suffix + MASK_CHAR + masked_content
        masked_string += PAD_CHAR * (self.block_size + 1 - len(masked_string))

        x = torch.tensor([self.stoi[c] for c in masked_string[:-1]], dtype=torch.long)
        y = torch.tensor([self.stoi[c] for c in masked_string[1:]], dtype=torch.long)
        return x, y

    # The same rows for a whole batch at once, made with torch on the batch's device: a GPU's
    # pretraining step takes ~10 ms, and 128 calls of __getitem__ ~4 ms of a CPU core.
    # No loop over rows and no host synchronisation once the documents are on the device.

    def corrupt_batch(self, idx):
        """x, y of the rows idx (a LongTensor on any device), each drawn from the same distribution
        as self[i], made on idx's device with torch's random generator of that device."""
        return self.assemble_batch(idx, *self.draw_corruption(idx))

    def draw_corruption(self, idx):
        """__getitem__'s random quantities for the rows idx: n = len(truncated), masked_len, start."""
        _, doc_len = self._documents_on(idx.device)
        max_len = self._max_len()
        # float64: floor(u * count) must stay below count and give each integer the same chance;
        # a float32 u has only 24 bits and is one rounding away from count (in float32,
        # (1 - 2**-24) * 113 + 16 rounds up to 129.0), a float64 u has 53
        u = torch.rand(3, len(idx), dtype=torch.float64, device=idx.device)

        def randint(u, low, high):  # random.randint(low, high), high may differ per row
            return (u * (high - low + 1)).floor().long() + low

        n = torch.minimum(randint(u[0], min(4, max_len), max_len), doc_len[idx])
        # torch.round rounds half to even, as Python's round does (n / 2 is exact)
        masked_len = randint(u[1], 1, (torch.round(n / 2) - 1).long().clamp(min=1))
        masked_len = torch.where(n > 0, masked_len, 0)  # an empty document masks nothing
        start = randint(u[2], 0, n - masked_len)
        return n, masked_len, start

    def assemble_batch(self, idx, n, masked_len, start):
        """x, y of the rows idx, given __getitem__'s n = len(truncated), masked_len and start
        (LongTensors, one value a row): no randomness here."""
        doc_ids, _ = self._documents_on(idx.device)
        # masked_string = prefix MASK suffix MASK masked_content PAD...: for each position j,
        # which character of the document it shows (prefix, suffix or content), or MASK or PAD
        j = torch.arange(self.block_size + 1, device=idx.device)
        n, masked_len, start = n[:, None], masked_len[:, None], start[:, None]
        second_mask = n - masked_len + 1
        src = torch.where(j < start, j,                                        # prefix
                          torch.where(j < second_mask, j - 1 + masked_len,     # suffix
                                      j - second_mask - 1 + start))            # masked content
        chars = doc_ids[idx[:, None], src.clamp(0, doc_ids.shape[1] - 1)]  # off-document j: MASK or PAD
        is_mask = (j == start) | (j == second_mask)
        string = torch.where(is_mask, self.stoi[MASK_CHAR],
                             torch.where(j > n + 1, self.stoi[PAD_CHAR], chars))
        return string[:, :-1].contiguous(), string[:, 1:].contiguous()

    def _max_len(self):
        return min(int(self.block_size * 7 / 8), self.block_size - 1)  # as in __getitem__

    def _documents_on(self, device):
        """(ids, lengths) of the documents, padded with PAD, on device; built once per device.
        A row never shows more than the first max_len characters of its document, so only
        those are kept (at least one column, so that tiny blocks can still index it)."""
        if device not in self._documents:
            width = max(self._max_len(), 1)
            docs = [document[:width] for document in self.data]
            ids = torch.tensor([[self.stoi[c] for c in d] + [self.stoi[PAD_CHAR]] * (width - len(d))
                                for d in docs], dtype=torch.long)
            lengths = torch.tensor([len(d) for d in docs], dtype=torch.long)
            self._documents[device] = ids.to(device), lengths.to(device)
        return self._documents[device]


if __name__ == "__main__":
    argp = argparse.ArgumentParser(description="Print a few examples of a dataset.")
    argp.add_argument("dataset_type", choices=["namedata", "charcorruption"],
                      help="Type of dataset to sample from.")
    argp.add_argument("--data_dir", default=".", help="folder holding wiki.txt and birth_places_train.tsv")
    args = argp.parse_args()

    with open(f"{args.data_dir}/wiki.txt", encoding="utf-8") as f:
        corruption_dataset = CharCorruptionDataset(f.read(), 128)
    if args.dataset_type == "namedata":
        with open(f"{args.data_dir}/birth_places_train.tsv", encoding="utf-8") as f:
            shown = NameDataset(corruption_dataset, f.read())
    else:
        shown = corruption_dataset
    for _, (x, y) in zip(range(4), shown):
        print("x:", "".join([shown.itos[int(c)] for c in x]))
        print("y:", "".join([shown.itos[int(c)] for c in y]))
