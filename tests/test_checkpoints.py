"""
Checkpoints: loading one never runs code, a resume continues only the run that
wrote it, and an interrupted run resumes to the same bytes, under torchrun too.
"""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import hardware
from conftest import ROOT
from test_robustness import CPU, TRAIN, WIKI, cli, interrupted, one_clean_line


class Payload:
    """What an attacker would hide in a checkpoint: unpickling it creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A corpus and a real checkpoint of a 1-epoch run (kept by --save_every 1)."""
    d = tmp_path_factory.mktemp("ckpt")
    (d / "wiki.txt").write_text(WIKI, encoding="utf-8")
    (d / "train.tsv").write_text(TRAIN, encoding="utf-8")
    out = cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1",
               "--save_every", "1", "--batch_size", "32"] + CPU, d)
    assert out.returncode == 0, out.stderr
    dtype = hardware.pick_dtype("auto", "cpu")  # the start-up line:
    assert re.search(rf"^pretrain vanilla on cpu \(\d+ threads, \w+\), {dtype}: 62 rows, 32 a step, 1 epochs = 2 steps"
                     r"(; .*)?$", out.stdout, re.M), out.stdout
    return d


def pretrain(d, *extra):
    return cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1",
                "--batch_size", "32", "--resume"] + CPU + list(extra), d)


def test_a_crafted_checkpoint_runs_no_code(run_dir, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(run_dir / "p.params.ckpt.epoch1", weights_only=True)
    state["extra"] = Payload(marker)  # hidden under an extra key of a real checkpoint
    torch.save(state, run_dir / "p.params.ckpt")
    try:
        one_clean_line(pretrain(run_dir), "p.params.ckpt: cannot resume", "cannot be loaded safely")
        for script in (["snapshot_curve.py", str(run_dir), str(tmp_path / "out")], ["grad_precision.py"]):
            args = script + [str(run_dir / "p.params.ckpt")]
            if script[0] == "grad_precision.py":
                args += ["--data_dir", str(run_dir), "--rows", "2"]
            out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script[0])] + args[1:],
                                 capture_output=True, text=True)
            assert out.returncode != 0, out.stdout
        assert not marker.exists(), "loading the checkpoint ran the attacker's code"
    finally:
        os.remove(run_dir / "p.params.ckpt")


def test_a_checkpoint_of_the_old_format_is_refused_with_the_reason(run_dir):
    state = torch.load(run_dir / "p.params.ckpt.epoch1", weights_only=True)
    del state["format"]
    state["rng"] = {"numpy": np.random.get_state(), "python": None}  # how the old format stored numpy's state
    torch.save(state, run_dir / "p.params.ckpt")
    try:
        one_clean_line(pretrain(run_dir), "p.params.ckpt: cannot resume", "older version", "delete it")
    finally:
        os.remove(run_dir / "p.params.ckpt")


@pytest.mark.parametrize("extra,named", [(["--batch_size", "16"], "--batch_size 32"),
                                         (["--seed", "3"], "--seed 0"),
                                         (["--shuffle"], "--shuffle False"),
                                         (["--pretrain_lr", "1e-3"], "learning rate 0.006")])
def test_a_resume_with_other_arguments_is_refused(run_dir, tmp_path, extra, named):
    """Continuing with another batch size would silently train from a wrong position, and so on."""
    for name in ("wiki.txt", "p.params.ckpt.epoch1"):
        (tmp_path / name.replace(".epoch1", "")).write_bytes((run_dir / name).read_bytes())
    args = ["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1", "--resume"] + CPU
    args += extra if extra[0] == "--batch_size" else ["--batch_size", "32"] + extra
    one_clean_line(cli(args, tmp_path), "p.params.ckpt: cannot resume", f"written by a run with {named}")


def test_a_changed_corpus_is_refused(run_dir, tmp_path):
    (tmp_path / "wiki.txt").write_text(WIKI.replace("Paris", "Lille"), encoding="utf-8")
    (tmp_path / "p.params.ckpt").write_bytes((run_dir / "p.params.ckpt.epoch1").read_bytes())
    one_clean_line(pretrain(tmp_path), "p.params.ckpt: cannot resume", "corpus sha256")


def test_the_same_run_resumes_from_its_checkpoint(run_dir):
    (run_dir / "p.params.ckpt").write_bytes((run_dir / "p.params.ckpt.epoch1").read_bytes())
    out = pretrain(run_dir, "--max_epochs", "2")
    assert out.returncode != 0 and "--max_epochs 1" in out.stderr  # the schedule's epochs count too
    out = pretrain(run_dir)
    assert out.returncode == 0, out.stderr
    assert "resuming from p.params.ckpt: epoch 2, step 2" in out.stdout


def test_checkpoints_hold_only_tensors_and_plain_values(run_dir):
    state = checkpoint.load(run_dir / "p.params.ckpt.epoch1")  # weights_only=True
    assert state["format"] == checkpoint.FORMAT and len(state["rng"]) == 1
    assert state["run"]["--batch_size"] == 32 and state["run"]["training rows"] == 62


def test_sighup_checkpoints_like_sigint(run_dir, tmp_path):
    """An SSH session that drops sends SIGHUP: the run checkpoints and says how to resume."""
    for name in ("wiki.txt", "train.tsv"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    args = ["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "h.params", "--max_epochs", "10",
            "--batch_size", "16"] + CPU  # 40 steps, the signal after the first
    returncode, out, err = interrupted(tmp_path, args, signal.SIGHUP)
    assert returncode == 130, err[-2000:]
    assert "interrupted by SIGHUP" in err and "--resume" in err and "Traceback" not in err
    assert 0 < checkpoint.load(tmp_path / "h.params.ckpt")["step"] < 40


def test_two_processes_resume_to_the_same_bytes_when_one_rank_is_stopped():
    """
    torchrun with 2 CPU processes (gloo), dropout on: only rank 1 is told to stop, mid-epoch.
    Both must stop at the same step (a rank stopping alone leaves the other in a collective),
    each saves its own random streams, and the resumed run equals the uninterrupted one.
    """
    import tempfile
    # --standalone: a free port of its own, so that two suites on one host do not collide
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(ROOT, "tests", "ddp_resume.py"), tempfile.mkdtemp()],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESULT stopped at [(1, 2, 6), (1, 2, 6)]" in out.stdout, out.stdout[-2000:]
    assert "RESULT identical [True, True]" in out.stdout
