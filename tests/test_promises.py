"""
What README.md promises and no other test checked: the handout's defaults, SIGTERM's
checkpoint, evaluate --plain, --dtype float16, an unwritable output folder, the
arguments a resume must share, and a byte-exact resume through the command line.
"""
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import run
import trainer
from test_robustness import RUN, TRAIN, WIKI, cli, one_clean_line



def pretrain(d, *extra):
    return cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--device", "cpu"]
               + list(extra), d)


# ---------------------------------------------------------------- the handout's defaults

def config(argv, phase, train_rows=2000, pretrain_rows=2938):
    """run.py's TrainerConfig for a command line, built as a run builds it, without training."""
    args = run.parse_args(argv + ["--writing_params_path", "p.params", "--device", "cpu"])
    args.corpus_sha256 = "0"
    return run.trainer_config(args, phase, train_rows, pretrain_rows, "cpu", (0, 1))


@pytest.mark.parametrize("variant", ["vanilla", "perceiver", "rope"])
def test_the_handout_s_hyperparameters_are_the_defaults(variant):
    pre = config(["pretrain", variant, "wiki.txt"], "pretrain", train_rows=2938)
    scratch = config(["finetune", variant, "wiki.txt"], "finetune from scratch")
    pretrained = config(["finetune", variant, "wiki.txt", "--reading_params_path", "p"], "finetune from pretrained")
    assert (pre.max_epochs, scratch.max_epochs, pretrained.max_epochs) == (650, 75, 10)
    assert (pre.batch_size, scratch.batch_size, pretrained.batch_size) == (128, 256, 256)
    assert (pre.learning_rate, scratch.learning_rate, pretrained.learning_rate) == (6e-3, 6e-4, 6e-4)
    for c in (pre, scratch, pretrained):
        assert c.lr_decay and c.warmup_tokens == 512 * 20
        assert c.betas == (0.9, 0.95) and c.grad_norm_clip == 1.0 and c.weight_decay == 0.1
    # the cosine's length counts pretraining rows in every phase; rope's pretraining (2024) ends it at 650
    assert pre.final_tokens == (650 if variant == "rope" else 200) * 2938 * 128
    assert scratch.final_tokens == pretrained.final_tokens == 200 * 2938 * 128


# ---------------------------------------------------------------- SIGTERM

def test_sigterm_checkpoints_and_the_checkpoint_resumes(corpus):
    """
    A real process, signalled once it has printed its first step: 1000 epochs (one step each)
    cannot end first. The checkpoint is then cut down to the next epoch, so that the resume ends.
    """
    args = ["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1000",
            "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, RUN] + args, cwd=corpus, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen = b""
    while b"epoch 1 iter 0" not in seen:  # tqdm's first description, after the first step
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    err = seen.decode() + err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert not os.path.exists(corpus / "p.params")
    state = torch.load(corpus / "p.params.ckpt", weights_only=True)
    assert 1 <= state["step"] < 1000
    epochs = state["epoch"] + 2
    state["run"]["--max_epochs"] = epochs
    torch.save(state, corpus / "p.params.ckpt")
    done = cli(args[:-3] + [str(epochs), "--device", "cpu", "--resume"], corpus)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from p.params.ckpt: epoch {state['epoch'] + 1}, step {state['step']}" in done.stdout
    assert os.path.exists(corpus / "p.params") and not os.path.exists(corpus / "p.params.ckpt")


# ---------------------------------------------------------------- evaluate --plain, --dtype float16

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("trained")
    (d / "wiki.txt").write_text(WIKI, encoding="utf-8")
    (d / "train.tsv").write_text(TRAIN, encoding="utf-8")
    out = cli(["finetune", "vanilla", "wiki.txt", "--writing_params_path", "vanilla.params", "--device", "cpu",
               "--finetune_corpus_path", "train.tsv", "--max_epochs", "3"], d)
    assert out.returncode == 0, out.stderr
    return d


def test_evaluate_plain_gives_the_default_s_predictions(trained, tmp_path):
    predictions = []
    for name, extra in (("default", []), ("plain", ["--plain"])):
        out = cli(["evaluate", "vanilla", str(trained / "wiki.txt"), "--reading_params_path",
                   str(trained / "vanilla.params"), "--eval_corpus_path", str(trained / "train.tsv"),
                   "--outputs_path", f"{name}.predictions", "--device", "cpu"] + extra, tmp_path)
        assert out.returncode == 0 and "Correct: " in out.stdout, out.stderr
        predictions.append((tmp_path / f"{name}.predictions").read_text(encoding="utf-8"))
    assert predictions[0] == predictions[1] and len(predictions[0].splitlines()) == 2


def test_dtype_float16_trains_or_says_it_falls_back(corpus, monkeypatch):
    """fp16 where the CPU computes it (its GradScaler on); where emulated, float32 with a note."""
    made = []

    class Seen(trainer.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
    monkeypatch.setattr(trainer, "Trainer", Seen)
    out = pretrain(corpus, "--dtype", "float16", "--max_epochs", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    fell_back = "has no float16 arithmetic of its own" in out.stderr
    dtype = "float32" if fell_back else "float16"
    assert f"), {dtype}: 62 rows" in out.stdout, out.stdout
    assert made[0].config.dtype == dtype and made[0].scaler.is_enabled() == (dtype == "float16")
    params = torch.load(corpus / "p.params", weights_only=True)
    assert all(torch.isfinite(v).all() for v in params.values() if v.is_floating_point())


# ---------------------------------------------------------------- refused before any work

def test_an_unwritable_output_folder_is_refused_before_any_work(corpus):
    if os.geteuid() == 0:
        pytest.skip("permissions do not bind root")
    (corpus / "ro").mkdir()
    (corpus / "ro").chmod(0o555)
    try:
        out = pretrain(corpus, "--writing_params_path", "ro/p.params", "--max_epochs", "1")
        one_clean_line(out, "ro/p.params", "cannot write in folder")
        assert "trained" not in out.stdout and not os.listdir(corpus / "ro")
    finally:
        (corpus / "ro").chmod(0o755)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A corpus and the checkpoint of a 1-epoch pretraining (kept by --save_every 1)."""
    d = tmp_path_factory.mktemp("checkpointed")
    (d / "wiki.txt").write_text(WIKI, encoding="utf-8")
    out = pretrain(d, "--max_epochs", "1", "--save_every", "1", "--batch_size", "32")
    assert out.returncode == 0, out.stderr
    return d


@pytest.mark.parametrize("extra,named", [(["perceiver", "--bottleneck_dim", "16"], "variant vanilla"),
                                         (["processes"], "processes 2"),
                                         (["--warmup_epochs", "1"], "--warmup_epochs None"),
                                         (["--final_epochs", "100"], "--final_epochs 200")])
def test_a_resume_with_other_arguments_is_refused(checkpointed, tmp_path, extra, named):
    shutil.copy(checkpointed / "wiki.txt", tmp_path / "wiki.txt")
    state = torch.load(checkpointed / "p.params.ckpt.epoch1", weights_only=True)
    if extra == ["processes"]:  # as torchrun --nproc_per_node=2 writes it: one random state per rank
        state["run"]["processes"], state["rng"], extra = 2, state["rng"] * 2, []
    torch.save(state, tmp_path / "p.params.ckpt")
    variant, extra = (extra[0], extra[1:]) if extra and extra[0] == "perceiver" else ("vanilla", extra)
    out = cli(["pretrain", variant, "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1",
               "--batch_size", "32", "--device", "cpu", "--resume"] + extra, tmp_path)
    one_clean_line(out, "p.params.ckpt: cannot resume", f"written by a run with {named}")


# ---------------------------------------------------------------- a byte-exact resume, command line to params

def test_a_run_interrupted_mid_epoch_resumes_to_the_uninterrupted_run_s_bytes(tmp_path, monkeypatch):
    """4 steps an epoch, dropout on, stopped after step 3 as a signal would stop it, then --resume."""
    for name in ("full", "cut"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "wiki.txt").write_text(WIKI, encoding="utf-8")
    args = ["--max_epochs", "2", "--batch_size", "16", "--seed", "3"]
    out = pretrain(tmp_path / "full", *args)
    assert out.returncode == 0 and "trained 2 epochs, 8 steps" in out.stdout, out.stderr[-2000:]

    class StopAfter3(trainer.Trainer):
        def train_step(self, x, y):
            loss = super().train_step(x, y)
            if self.step == 3:
                self.stop_signal = signal.SIGINT
            return loss
    monkeypatch.setattr(trainer, "Trainer", StopAfter3)
    out = pretrain(tmp_path / "cut", *args)
    assert out.returncode == 130 and "interrupted by SIGINT at epoch 1, step 3" in out.stderr, out.stderr[-2000:]
    monkeypatch.undo()
    out = pretrain(tmp_path / "cut", *args, "--resume")
    assert out.returncode == 0 and "resuming from p.params.ckpt: epoch 1, step 3" in out.stdout, out.stderr[-2000:]
    full, cut = (torch.load(tmp_path / name / "p.params", weights_only=True) for name in ("full", "cut"))
    assert list(full) == list(cut) and all(torch.equal(full[k], cut[k]) for k in full)
