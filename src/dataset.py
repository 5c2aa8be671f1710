"""
The two datasets of the assignment:
- CharCorruptionDataset: span corruption of one-line documents, for pretraining.
  It also defines the vocabulary.
- NameDataset: "Where was <name> born?<TAB><place>" lines, for finetuning.

Importing this module reads no file and prints nothing (an autograder imports it).
Bad input raises inputs.InputError (a ValueError): "line N: problem".
(A GPU makes whole pretraining batches at once instead: device_batches.py.)
"""

import argparse
import random

import torch
from torch.utils.data import Dataset

from inputs import InputError, encode, question_rows

PAD_CHAR = u"\u25A1"   # empty square: padding, id 0, ignored by the loss
MASK_CHAR = u"\u2047"  # double question mark: marks the corrupted span, id 1


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
        for n, question, answer in question_rows(data, answers=True):
            encode(self.stoi, question + answer, n)
            if len(question) + len(answer) + 2 > self.block_size:
                raise InputError(f"question and answer are {len(question) + len(answer)} characters, more "
                                 f"than block_size - 2 = {self.block_size - 2}", n)
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
                raise InputError(f"the corpus contains the reserved {name} character {special!r}", n)
        chars.insert(0, MASK_CHAR)
        chars.insert(0, PAD_CHAR)

        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.itos = {i: ch for i, ch in enumerate(chars)}

        self.block_size = block_size
        self.vocab_size = len(chars)
        self.data = data.split("\n")

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
