"""
When checkpoints are written: by wall time (--checkpoint_minutes), mid-epoch too, on a stop
signal, never after the end (the params first); --save_every's snapshots at their epochs; the
temporary files of a killed write removed at the next start; a full disk at the end keeps the
finished model.
"""
import os
import resource
import signal
import subprocess
import sys

import torch

import trainer
from conftest import ROOT
from test_robustness import cli

RUN = os.path.join(ROOT, "src", "run.py")



def pretrain(corpus, *flags):
    return cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--batch_size", "16",
                "--device", "cpu", *flags], corpus)


def recording_saves(monkeypatch):
    """(epoch, batches_done) of every checkpoint the trainer writes (they are still written)."""
    saves, real = [], trainer.Trainer.save_checkpoint

    def save(self):
        saves.append((self.epoch, self.batches_done))
        real(self)
    monkeypatch.setattr(trainer.Trainer, "save_checkpoint", save)
    return saves


def test_by_default_a_short_run_writes_no_checkpoint_only_its_params(corpus, monkeypatch):
    """62 rows, 4 steps an epoch: 3 epochs take seconds, far less than the 5 minutes between checkpoints."""
    saves = recording_saves(monkeypatch)
    out = pretrain(corpus, "--max_epochs", "3")
    assert out.returncode == 0, out.stderr
    assert saves == [] and (corpus / "p.params").is_file() and not (corpus / "p.params.ckpt").exists()


def test_checkpoint_minutes_0_writes_one_after_every_epoch_but_the_last(corpus, monkeypatch):
    saves = recording_saves(monkeypatch)
    assert pretrain(corpus, "--max_epochs", "3", "--checkpoint_minutes", "0").returncode == 0
    assert saves == [(1, 0), (2, 0)]  # after the last, the params instead


def test_when_the_minutes_are_up_the_checkpoint_comes_mid_epoch_and_resumes_exactly(corpus, monkeypatch):
    """A clock that moves 2 minutes a call: with --checkpoint_minutes 3, a checkpoint every other step,
    mid-epoch; a run killed after one of them resumes from it to the uninterrupted run's bytes."""
    assert pretrain(corpus, "--max_epochs", "2", "--writing_params_path", "full.params").returncode == 0
    now = [0.0]

    def clock():
        now[0] += 120.0
        return now[0]
    monkeypatch.setattr(trainer.time, "time", clock)
    saves = recording_saves(monkeypatch)
    real_step = trainer.Trainer.train_step

    def killed_after_step_6(self, x, y):  # a SIGKILL: nothing more is written
        if self.step == 6:
            raise SystemExit(137)
        return real_step(self, x, y)
    monkeypatch.setattr(trainer.Trainer, "train_step", killed_after_step_6)
    out = pretrain(corpus, "--max_epochs", "2", "--checkpoint_minutes", "3")
    assert out.returncode == 137
    assert any(batches for _, batches in saves), saves  # some mid-epoch
    state = torch.load(corpus / "p.params.ckpt", weights_only=True)
    assert 0 < state["step"] <= 6 and state["batches_done"] == state["step"] - 4 * state["epoch"]
    monkeypatch.setattr(trainer.Trainer, "train_step", real_step)
    done = pretrain(corpus, "--max_epochs", "2", "--checkpoint_minutes", "3", "--resume")
    assert done.returncode == 0 and f"step {state['step']}" in done.stdout, done.stderr
    full, resumed = (torch.load(corpus / p, weights_only=True) for p in ("full.params", "p.params"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_stop_signal_checkpoints_at_once_whatever_the_minutes(corpus, monkeypatch):
    real_step = trainer.Trainer.train_step

    def signalled_at_step_5(self, x, y):
        out = real_step(self, x, y)
        if self.step == 5:
            self.stop_signal = signal.SIGTERM
        return out
    monkeypatch.setattr(trainer.Trainer, "train_step", signalled_at_step_5)
    out = pretrain(corpus, "--max_epochs", "3", "--checkpoint_minutes", "1000")
    assert out.returncode == 130 and "interrupted by SIGTERM" in out.stderr
    state = torch.load(corpus / "p.params.ckpt", weights_only=True)
    assert (state["step"], state["epoch"], state["batches_done"]) == (5, 1, 1)


def test_save_every_keeps_its_snapshots_whatever_the_minutes(corpus, monkeypatch):
    saves = recording_saves(monkeypatch)
    assert pretrain(corpus, "--max_epochs", "4", "--save_every", "2").returncode == 0
    assert saves == [(2, 0), (4, 0)]
    assert sorted(p.name for p in corpus.glob("p.params.ckpt*")) == ["p.params.ckpt.epoch2", "p.params.ckpt.epoch4"]
    assert torch.load(corpus / "p.params.ckpt.epoch2", weights_only=True)["step"] == 8


def test_a_killed_writes_temporary_files_are_removed_at_the_next_start(corpus):
    """atomic_write's temporaries (<name>.<random>.tmp), as a SIGKILL during a checkpoint leaves them."""
    stale = ["p.params.ckpt.k3j_x1.tmp", "p.params.a8c2.tmp", "p.params.ckpt.epoch2.zz9.tmp"]
    for name in stale:
        (corpus / name).write_bytes(b"x" * 1000)
    (corpus / "other.params.ckpt.q1.tmp").write_bytes(b"y")  # another run's: not ours to remove
    out = pretrain(corpus, "--max_epochs", "1")
    assert out.returncode == 0, out.stderr
    assert "removed the temporary files of an interrupted write beside p.params" in out.stdout
    assert not [n for n in stale if (corpus / n).exists()] and (corpus / "other.params.ckpt.q1.tmp").exists()


def test_a_disk_too_full_for_the_last_checkpoint_keeps_the_finished_model(corpus):
    """A file size limit of 20 MB, between the handout model's params (13 MB) and its checkpoint (40 MB):
    the run ends with its params (a checkpoint after the last epoch, written first, used to fail it)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))
    out = subprocess.run([sys.executable, RUN, "pretrain", "vanilla", "wiki.txt", "--writing_params_path",
                          "p.params", "--max_epochs", "2", "--batch_size", "32", "--device", "cpu",
                          "--checkpoint_minutes", "0"], cwd=corpus, capture_output=True, text=True,
                         preexec_fn=limit, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 1, out.stderr[-2000:]  # the checkpoint after epoch 1 (40 MB) cannot be written
    assert "p.params.ckpt: cannot write: File too large" in out.stderr
    out = subprocess.run([sys.executable, RUN, "pretrain", "vanilla", "wiki.txt", "--writing_params_path",
                          "q.params", "--max_epochs", "2", "--batch_size", "32", "--device", "cpu"], cwd=corpus,
                         capture_output=True, text=True, preexec_fn=limit, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (corpus / "q.params").stat().st_size > 10 << 20 and not (corpus / "q.params.ckpt").exists()
    assert not list(corpus.glob("q.params*.tmp"))
