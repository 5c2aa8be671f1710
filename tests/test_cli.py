"""The course's command lines, run as a user runs them (shortened with --max_epochs)."""
import glob
import math
import os
import re
import subprocess
import sys

import pytest
import torch

import dataset
from conftest import ROOT

RUN = os.path.join(ROOT, "src", "run.py")


def run(args, cwd, ok=True):
    out = subprocess.run([sys.executable, RUN] + args, cwd=cwd, capture_output=True, text=True)
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def count_questions(path):
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, data_dir):
    """The first 130 documents of wiki.txt and train lines they can encode (130 to train, 40 to evaluate)."""
    d = tmp_path_factory.mktemp("small")
    with open(os.path.join(data_dir, "wiki.txt"), encoding="utf-8") as f:
        wiki = "\n".join(f.read().split("\n")[:130]) + "\nWhere was everybody born?\n"
    (d / "wiki.txt").write_text(wiki, encoding="utf-8")
    chars = set(wiki)
    with open(os.path.join(data_dir, "birth_places_train.tsv"), encoding="utf-8") as f:
        train = [l for l in f.read().split("\n") if l.strip() and set(l) - {"\t"} <= chars]
    (d / "train.tsv").write_text("\n".join(train[:130]) + "\n", encoding="utf-8")
    (d / "dev.tsv").write_text("\n".join(train[130:170]) + "\n", encoding="utf-8")
    return d


def test_course_commands_without_pretraining(data_dir, tmp_path, variant="vanilla"):
    """
    The handout's part (d) on the course's own files. The files are read alike for both
    variants; the Perceiver's command line runs in test_pretrain_then_finetune_then_evaluate.
    """
    D = data_dir
    extra = ["--bottleneck_dim", "64"] if variant == "perceiver" else []
    p = f"{variant}.model.params"
    run(["finetune", variant, f"{D}/wiki.txt"] + extra + ["--writing_params_path", p,
         "--finetune_corpus_path", f"{D}/birth_places_train.tsv", "--max_epochs", "1"], tmp_path)
    assert os.path.isfile(tmp_path / p)
    bneck = 64 if variant == "perceiver" else 32
    logdir = tmp_path / "expt" / "finetune" / f"run_{variant}_{bneck}_pt_lr_0.006000_ft_lr_0.000600"
    assert glob.glob(str(logdir / "events.out.tfevents.*")), "TensorBoard log missing"

    dev = run(["evaluate", variant, f"{D}/wiki.txt"] + extra + ["--reading_params_path", p,
               "--eval_corpus_path", f"{D}/birth_dev.tsv", "--outputs_path", "dev.predictions"], tmp_path)
    n_dev = count_questions(f"{D}/birth_dev.tsv")
    assert f"out of {float(n_dev)}: " in dev.stdout and dev.stdout.count("Correct: ") == 1
    assert len(lines(tmp_path / "dev.predictions")) == n_dev

    test = run(["evaluate", variant, f"{D}/wiki.txt"] + extra + ["--reading_params_path", p,
                "--eval_corpus_path", f"{D}/birth_test_inputs.tsv", "--outputs_path", "test.predictions"], tmp_path)
    assert "Predictions written to test.predictions; no targets provided" in test.stdout
    assert len(lines(tmp_path / "test.predictions")) == count_questions(f"{D}/birth_test_inputs.tsv") == 437


@pytest.mark.parametrize("variant", ["vanilla", "perceiver"])
def test_pretrain_then_finetune_then_evaluate(variant, small_corpus, tmp_path):
    C = small_corpus
    extra = ["--bottleneck_dim", "64"] if variant == "perceiver" else []
    run(["pretrain", variant, f"{C}/wiki.txt"] + extra + ["--writing_params_path", "p.params", "--max_epochs", "1"],
        tmp_path)
    run(["finetune", variant, f"{C}/wiki.txt"] + extra + ["--reading_params_path", "p.params",
         "--writing_params_path", "f.params", "--finetune_corpus_path", f"{C}/train.tsv", "--max_epochs", "1"],
        tmp_path)
    out = run(["evaluate", variant, f"{C}/wiki.txt"] + extra + ["--reading_params_path", "f.params",
               "--eval_corpus_path", f"{C}/dev.tsv", "--outputs_path", "out.predictions"], tmp_path)
    assert "Correct: " in out.stdout
    assert len(lines(tmp_path / "out.predictions")) == count_questions(f"{C}/dev.tsv") == 40
    assert os.path.isdir(tmp_path / "expt" / "pretrain") and os.path.isdir(tmp_path / "expt" / "finetune")


def test_same_seed_same_params(small_corpus, tmp_path):
    """On CPU (on a GPU, CUDA's atomic adds in the backward make two same-seed runs differ: README)."""
    C = small_corpus
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        run(["pretrain", "vanilla", f"{C}/wiki.txt", "--writing_params_path", f"{name}.params",
             "--max_epochs", "1", "--seed", seed, "--device", "cpu"], tmp_path)
    a, b, c = (torch.load(tmp_path / f"{n}.params") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_batch_size_and_warmup_epochs(small_corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    C = small_corpus
    out = run(["pretrain", "vanilla", f"{C}/wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "2",
               "--batch_size", "64", "--warmup_epochs", "1", "--pretrain_lr", "1e-3"], tmp_path)
    n = len(dataset.CharCorruptionDataset((C / "wiki.txt").read_text(encoding="utf-8"), 128))
    per_epoch = math.ceil(n / 64)
    assert f"trained 2 epochs, {2 * per_epoch} steps" in out.stdout
    acc = EventAccumulator(glob.glob(str(tmp_path / "expt" / "pretrain" / "*"))[0])
    acc.Reload()
    lr = [e.value for e in acc.Scalars("train/lr")]
    # linear warm-up over the first epoch's rows, then the cosine (200 epochs long) from the peak
    for k in range(per_epoch - 1):
        assert lr[k] == pytest.approx(1e-3 * (k + 1) * 64 / n, rel=1e-4)
    assert 0.999e-3 < lr[per_epoch] <= 1e-3


def test_help_lists_the_course_flags(tmp_path):
    out = run(["--help"], tmp_path)
    for flag in ("--bottleneck_dim", "--reading_params_path", "--writing_params_path", "--finetune_corpus_path",
                 "--eval_corpus_path", "--outputs_path", "--pretrain_lr", "--finetune_lr", "--tb_expt_name",
                 "--max_epochs", "--batch_size", "--warmup_epochs", "--seed", "--device", "--num_workers", "--plain",
                 "--shuffle", "--save_every", "--dtype", "--resume", "--final_epochs"):
        assert flag in out.stdout


def test_readme_documents_every_flag_beyond_the_course():
    with open(os.path.join(ROOT, "src", "run.py"), encoding="utf-8") as f:
        additions = f.read().split("# additions to the course's flags")[1]
    flags = re.findall(r'add_argument\("(--\w+)"', additions)
    assert len(flags) >= 12
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    missing = [flag for flag in flags if f"`{flag}" not in readme]
    assert not missing, f"README.md does not document {missing}"
