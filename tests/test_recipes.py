"""
The recipes' flags (results/recipes/), opt-in, at a tiny size: --dropout sets this run's model's
dropout; --mix_questions_path mixes the training questions, in the finetuning format, evenly into
every pretraining epoch. Without them the handout's run is unchanged.
"""
import pytest
import torch

import dataset
import mixing
import run
import trainer
from fast_dropout import Dropout
from test_robustness import TRAIN, WIKI, cli



def dropouts(gpt):
    return {m.p for m in gpt.modules() if isinstance(m, torch.nn.Dropout)}


@pytest.mark.parametrize("variant", ["vanilla", "perceiver", "rope"])
def test_dropout_sets_every_dropout_of_the_model(variant):
    args = run.parse_args(["pretrain", variant, "wiki.txt", "--writing_params_path", "p.params"])
    assert dropouts(run.build_model(args, 40)) == {0.1}  # the course's, by default
    args = run.parse_args(["pretrain", variant, "wiki.txt", "--writing_params_path", "p.params", "--dropout", "0"])
    gpt = run.build_model(args, 40)
    assert dropouts(gpt) == {0.0} and any(isinstance(m, Dropout) for m in gpt.modules())


def test_dropout_out_of_range_and_mixing_outside_pretraining_are_one_line(corpus):
    for value in ("1", "-0.1", "nan"):
        out = cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--dropout", value], corpus)
        assert out.returncode == 1 and out.stderr.strip() == \
            f"run.py: error: --dropout must be at least 0 and below 1, got {float(value)}", out.stderr
    out = cli(["finetune", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--finetune_corpus_path",
               "train.tsv", "--mix_questions_path", "train.tsv"], corpus)
    assert out.returncode == 1 and out.stderr.strip() == "run.py: error: --mix_questions_path is for pretrain, " \
                                                         "not finetune"


def test_mixed_rows_are_the_finetuning_rows_spread_evenly_through_the_epoch():
    pre = dataset.CharCorruptionDataset(WIKI, 128)
    questions = dataset.NameDataset(pre, TRAIN * 5)  # 10 question rows among 62 documents (the last one empty)
    mixed = mixing.MixedDataset(pre, questions)
    assert len(mixed) == len(pre) + len(questions) == 72
    places = [i for i, (source, _) in enumerate(mixed.order) if source == 1]
    assert [mixed.order[i][1] for i in places] == list(range(10))  # each question once, in file order
    gaps = [b - a for a, b in zip(places, places[1:])]
    assert max(gaps) - min(gaps) <= 1 and places[0] < 8 and places[-1] > 63  # evenly, from start to end
    assert [i for source, i in mixed.order if source == 0] == list(range(len(pre)))  # documents in file order
    x, y = mixed[places[3]]
    qx, qy = questions[3]
    assert x.shape == y.shape == (128,) and torch.equal(x[:127], qx) and torch.equal(y[:127], qy)
    assert x[127] == 0 and y[127] == 0  # padded by one PAD: the loss ignores it
    x, y = mixed[0]  # a document's row, as CharCorruptionDataset makes it
    assert x.shape == (128,) and int(x[0]) != 0


def test_mixed_pretraining_trains_on_both_and_resumes_only_with_the_same_questions(corpus, monkeypatch):
    args = ["pretrain", "rope", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "2",
            "--batch_size", "32", "--device", "cpu", "--dropout", "0"]
    real_step = trainer.Trainer.train_step

    def stop_after_one(self, x, y):
        out = real_step(self, x, y)
        self.stop_signal = 2  # SIGINT, as its handler sets it
        return out
    monkeypatch.setattr(trainer.Trainer, "train_step", stop_after_one)
    out = cli(args + ["--mix_questions_path", "train.tsv"], corpus)
    # 62 documents and 2 questions: 64 rows, 2 steps of 32 an epoch
    assert out.returncode == 130 and "64 rows, 32 a step, 2 epochs = 4 steps" in out.stdout, out.stdout + out.stderr
    monkeypatch.setattr(trainer.Trainer, "train_step", real_step)
    (corpus / "other.tsv").write_text("Where was Carla Diaz born?\tRome\n", encoding="utf-8")
    for flags in (["--mix_questions_path", "other.tsv"], []):
        refused = cli(args + flags + ["--resume"], corpus)
        assert refused.returncode == 1 and "cannot resume: was written by a run with training rows 64, but this " \
            "run has training rows" in refused.stderr, refused.stderr
    done = cli(args + ["--mix_questions_path", "train.tsv", "--resume"], corpus)
    assert done.returncode == 0 and "trained 2 epochs, 4 steps (3 in this run)" in done.stdout, done.stderr
