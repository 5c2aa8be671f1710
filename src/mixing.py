"""
Question rows mixed into pretraining (run.py --mix_questions_path): an opt-in
recipe, not the course's. Allen-Zhu and Li ("Physics of Language Models 3.1")
find that facts stored from biographies become extractable by questions once
question-answer text of other people is seen during pretraining. Here the rows
are the finetuning set's own (NameDataset's format: question MASK answer MASK),
padded by one PAD to the pretraining rows' block_size, and spread evenly through
each epoch in a fixed order (the course's loader keeps file order), so every
batch holds about the same share of them. Only training questions: never the dev
or test answers.
"""

import torch
from torch.utils.data import Dataset


class MixedDataset(Dataset):
    """The pretraining rows and the question rows, interleaved evenly; question rows padded to block_size."""

    def __init__(self, pretraining_dataset, question_dataset):
        self.pretraining, self.questions = pretraining_dataset, question_dataset
        self.block_size = pretraining_dataset.block_size
        n, m = len(pretraining_dataset), len(question_dataset)
        # each row at its fractional place in its own set: document j at j / n, question k at (k + 0.5) / m
        places = [(j / n, 0, j) for j in range(n)] + [((k + 0.5) / m, 1, k) for k in range(m)]
        self.order = [(source, i) for _, source, i in sorted(places)]

    def __len__(self):
        return len(self.order)

    def __getitem__(self, idx):
        source, i = self.order[idx]
        if source == 0:
            return self.pretraining[i]
        x, y = self.questions[i]
        pad = self.block_size - len(x)  # NameDataset's rows are block_size - 1 long
        return torch.nn.functional.pad(x, (0, pad)), torch.nn.functional.pad(y, (0, pad))
