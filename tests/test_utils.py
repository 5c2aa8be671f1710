import os
import subprocess
import sys

import pytest
import torch

import dataset
import decoding
import inputs
import model
import run
import utils
from conftest import ROOT, small_config


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return str(p)


def test_evaluate_places(tmp_path):
    path = write(tmp_path, "dev.tsv", "Where was A born?\tParis\r\nWhere was B born?\tLyon\n\nWhere was C born?\tRome")
    assert utils.evaluate_places(path, ["Paris", "Rome", "Rome"]) == (3.0, 2.0)
    assert utils.evaluate_places(path, ["paris", "Lyon ", "x"]) == (3.0, 0.0)  # exact match only
    with pytest.raises(ValueError, match="3 answers but 2 predictions"):
        utils.evaluate_places(path, ["Paris", "Lyon"])


def test_evaluate_places_without_answers(tmp_path, capsys):
    path = write(tmp_path, "test.tsv", "Where was A born?\nWhere was B born?\n")
    assert utils.evaluate_places(path, ["x", "y"]) == (0, 0)
    assert "No gold birth places" in capsys.readouterr().out


def test_read_questions_mixed_file(tmp_path):
    path = write(tmp_path, "mixed.tsv", "Where was A born?\tParis\nWhere was B born?\n")
    with pytest.raises(ValueError, match=r"mixed.tsv:2: line lacks a tab but line 1 has one"):
        inputs.read_questions(path)


def test_london_on_the_course_dev_set(data_dir):
    path = os.path.join(data_dir, "birth_dev.tsv")
    rows = inputs.read_questions(path)
    assert len(rows) == 500
    total, correct = utils.evaluate_places(path, ["London"] * len(rows))
    assert (total, correct) == (500.0, 25.0)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "london_baseline.py"), "--eval_corpus_path", path],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "Correct: 25.0 out of 500.0: 5.0%\n"


class Oracle(torch.nn.Module):
    """
    A stand-in model that answers every question right: it decodes the prompt it
    is given back to text, looks the question up, and emits the answer one
    character at a time, then MASK. Whatever evaluate loses or shifts between
    the file, the encoding, the decoder and the outputs file costs it points.
    """
    perceiver = True  # no KV cache: every call sees the whole sequence

    def __init__(self, answers, stoi, itos):
        super().__init__()
        self.answers, self.stoi, self.itos = answers, stoi, itos
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def get_block_size(self):
        return 128

    def forward(self, idx):
        """Causal, as the real models: position t predicts from the characters up to t."""
        logits = torch.full((idx.size(0), idx.size(1), len(self.itos)), -1e9)
        for b, row in enumerate(idx.tolist()):
            text = "".join(self.itos[i] for i in row)
            question = text.partition(dataset.MASK_CHAR)[0]
            continuation = self.answers[question] + dataset.MASK_CHAR + dataset.PAD_CHAR * 128
            for t in range(len(question), len(text)):
                logits[b, t, self.stoi[continuation[t - len(question)]]] = 0.0
        return logits, None


def test_names_with_commas_and_non_ascii_letters_round_trip_through_evaluate(data_dir, tmp_path, capsys):
    path = os.path.join(data_dir, "birth_dev.tsv")
    rows = inputs.read_questions(path)
    assert sum("," in q for _, q, _ in rows) == 8 and any(not q.isascii() for _, q, _ in rows)
    with open(os.path.join(data_dir, "wiki.txt"), encoding="utf-8") as f:
        pre = dataset.CharCorruptionDataset(f.read(), 128)
    oracle = Oracle({q: a for _, q, a in rows}, pre.stoi, pre.itos)
    outputs = tmp_path / "dev.predictions"
    args = run.parse_args(["evaluate", "vanilla", "wiki.txt", "--reading_params_path", "p", "--eval_corpus_path",
                           path, "--outputs_path", str(outputs)])
    run.evaluate(args, oracle, pre, "cpu")
    assert "Correct: 500.0 out of 500.0: 100.0%" in capsys.readouterr().out
    assert outputs.read_text(encoding="utf-8").split("\n")[:-1] == [a for _, _, a in rows]


@pytest.mark.parametrize("perceiver", [False, True])
@pytest.mark.parametrize("batch_size,bucket", [(2, 1), (2, 8), (512, 64)])
def test_batched_greedy_decoding_equals_one_prompt_at_a_time(perceiver, batch_size, bucket):
    """By exact length, in padded buckets of lengths (CPU), all in one padded batch (GPU); one prompt too long to pad."""
    torch.manual_seed(0)
    gpt = model.GPT(small_config(perceiver, block_size=64)).eval()
    prompts = [torch.randint(2, 40, (n,)).tolist() + [1] for n in (3, 7, 7, 12, 3, 20, 30, 7, 40)]
    itos = {i: chr(0x25A1) if i == 0 else chr(0x2047) if i == 1 else chr(60 + i) for i in range(40)}
    fast = decoding.predict_places(gpt, prompts, itos, mask_id=1, steps=32, batch_size=batch_size, bucket=bucket)
    slow = []
    for p in prompts:
        out = utils.sample(gpt, torch.tensor([p]), 32, sample=False)[0]
        slow.append("".join(itos[int(i)] for i in out).split(itos[1])[1])
    assert fast == slow
    # the cache path is what makes it fast: check it is taken for the vanilla model, and gives the same tokens
    calls = []
    cached = decoding.forward_cached
    decoding.forward_cached = lambda *a: calls.append(1) or cached(*a)
    try:
        x = torch.tensor([prompts[0]])
        assert torch.equal(decoding.greedy_batch(gpt, x, 32), utils.sample(gpt, x, 32))
    finally:
        decoding.forward_cached = cached
    assert len(calls) == (0 if perceiver else 32)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "out.txt")
    utils.atomic_write(path, lambda f: f.write("good\n"))

    def crash(f):
        f.write("half")
        raise RuntimeError("crash")
    with pytest.raises(RuntimeError):
        utils.atomic_write(path, crash)
    assert open(path).read() == "good\n"
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("perceiver", [False, True])
def test_decoding_layouts_agree_on_the_course_dev_prompts(perceiver, wiki_text, data_dir):
    """
    The handout-size model on the real dev prompts (lengths, commas, non-ASCII): padded
    buckets of 16 lengths (the CPU default for vanilla) and one padded batch (a GPU's)
    give the predictions of decoding by exact length (the CPU default for the Perceiver).
    """
    import argparse
    pre = dataset.CharCorruptionDataset(wiki_text, 128)
    rows = inputs.read_questions(os.path.join(data_dir, "birth_dev.tsv"))[::20 if perceiver else 5]  # it recomputes
    mask_id = pre.stoi[pre.MASK_CHAR]
    prompts = [inputs.encode(pre.stoi, q) + [mask_id] for _, q, _ in rows]
    torch.manual_seed(0)
    args = argparse.Namespace(variant="perceiver" if perceiver else "vanilla", bottleneck_dim=64, plain=False)
    gpt = run.build_model(args, pre.vocab_size).eval()
    # 12 characters: enough to compare the layouts, a third of the cost of the course's 32
    exact = decoding.predict_places(gpt, prompts, pre.itos, mask_id, steps=12, bucket=1)
    assert len({len(p) for p in prompts}) > 8 and len(set(exact)) > 1
    for bucket in (16, 128):
        assert decoding.predict_places(gpt, prompts, pre.itos, mask_id, steps=12, bucket=bucket) == exact


def test_atomic_write_works_where_folders_cannot_be_synced(tmp_path, monkeypatch):
    """Some mounts (Colab's Drive) refuse fsync on a folder: the write still lands, synced itself."""
    import errno
    import stat
    fsync, synced = os.fsync, []

    def fussy(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        synced.append(fd)
        return fsync(fd)
    monkeypatch.setattr(os, "fsync", fussy)
    path = str(tmp_path / "out.txt")
    utils.atomic_write(path, lambda f: f.write("good\n"))
    assert open(path).read() == "good\n" and len(synced) == 1
