"""Interrupted runs resume exactly; bad input gets one clear line and a non-zero exit."""
import contextlib
import io
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import dataset
import inputs
import model
import run
import trainer
import utils
from conftest import ROOT, TRAIN, WIKI, small_config  # noqa: F401 (others import them from here)

RUN = os.path.join(ROOT, "src", "run.py")
CPU = ["--device", "cpu"]  # what these tests check is the CPU's (a GPU VM's auto would pick cuda)


def cli(args, cwd):
    """
    run.py ARGS in folder cwd, in this process (a new one would spend seconds importing torch): its
    exit status, stdout and stderr, as subprocess.run gives them. cli_process runs a real process,
    for what only one shows: the interpreter's own tracebacks and warnings, signals, resource limits.
    """
    out, err, code = io.StringIO(), io.StringIO(), 0
    here = os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run.main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            err.write(e.code + "\n")  # what the interpreter prints for sys.exit("...")
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def cli_process(args, cwd):
    return subprocess.run([sys.executable, RUN] + args, cwd=cwd, capture_output=True, text=True)


# ---------------------------------------------------------------- resuming

class StopAfter(trainer.Trainer):
    """A trainer that receives a stop signal after a given optimizer step, as SIGINT would deliver it."""
    stop_at = None

    def train_step(self, x, y):
        loss = super().train_step(x, y)
        if self.step == self.stop_at:
            self.stop_signal = signal.SIGINT
        return loss


def tiny_run(tmp_path, stop_at=None, resume=False, **config):
    """A small run with dropout on, as in training: its stream must resume exactly too."""
    torch.manual_seed(0)
    random.seed(0)
    ds = dataset.CharCorruptionDataset(WIKI, 16)
    cfg = small_config()
    cfg.vocab_size = ds.vocab_size
    tconf = trainer.TrainerConfig(max_epochs=3, batch_size=16, learning_rate=1e-3, lr_decay=True,
                                  warmup_tokens=100, final_tokens=5000, sub_batches=2,
                                  ckpt_path=str(tmp_path / "ckpt"), **config)
    t = StopAfter(model.GPT(cfg), ds, None, tconf)
    t.stop_at = stop_at
    if resume:
        t.load_checkpoint(tconf.ckpt_path)
    return t


@pytest.mark.parametrize("device_batches", [False, True])
def test_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, device_batches):
    """Also with the batches made on the device (the GPU default), whose draws come from torch's generator."""
    full = tiny_run(tmp_path / "a", device_batches=device_batches)
    os.makedirs(tmp_path / "a")
    full.train()
    os.makedirs(tmp_path / "b")
    # 4 batches an epoch: stops in the middle of epoch 2
    first = tiny_run(tmp_path / "b", stop_at=7, device_batches=device_batches)
    with pytest.raises(trainer.Interrupted):
        first.train()
    assert (first.epoch, first.batches_done, first.step) == (1, 3, 7)
    resumed = tiny_run(tmp_path / "b", resume=True, device_batches=device_batches)
    assert (resumed.epoch, resumed.batches_done, resumed.step) == (1, 3, 7)
    resumed.train()
    assert (resumed.step, resumed.tokens) == (full.step, full.tokens) == (12, full.tokens)
    # the same bytes: same rows, same corruptions, same dropout masks, same optimizer state
    for (k, a), b in zip(full.raw_model.state_dict().items(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b), k
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


class Writer:
    """What a SummaryWriter is given."""

    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_losses_read_back_every_n_steps_are_logged_for_every_step(tmp_path):
    """log_every (25 on a GPU) delays reading the loss, not what TensorBoard receives."""
    runs = []
    for log_every in (1, 5):
        t = tiny_run(tmp_path / str(log_every), log_every=log_every, writer=Writer())
        os.makedirs(tmp_path / str(log_every))
        t.train()
        runs.append(t.config.writer.scalars)
    assert len(runs[0]) == 2 * 12
    assert [(tag, step) for tag, _, step in runs[0]] == [(tag, step) for tag, _, step in runs[1]]
    assert [v for _, v, _ in runs[0]] == pytest.approx([v for _, v, _ in runs[1]], rel=1e-6)
    assert sorted({step for _, _, step in runs[1]}) == list(range(12))


def test_the_expected_time_of_the_whole_run_is_said_once_after_the_first_steps(tmp_path, capsys):
    t = tiny_run(tmp_path / "a")
    os.makedirs(tmp_path / "a")
    t.train()
    out = capsys.readouterr().out
    assert len(re.findall(r"expected time of the whole run: about \d+ (s|min) more \(2 steps at [\d.]+ steps/s\)",
                          out)) == 1, out
    assert [trainer.duration(s) for s in (0.2, 40, 12 * 60 + 20, 3 * 3600 + 5 * 60)] == \
        ["1 s", "40 s", "12 min", "3 h 05 min"]


def test_snapshots_every_n_epochs_resume_to_the_same_params(tmp_path):
    full = tiny_run(tmp_path / "a")
    os.makedirs(tmp_path / "a")
    full.config.save_every = 2
    full.train()
    snapshots = sorted(os.listdir(tmp_path / "a"))
    assert snapshots == ["ckpt", "ckpt.epoch2"]
    os.makedirs(tmp_path / "b")
    shutil.copy(tmp_path / "a" / "ckpt.epoch2", tmp_path / "b" / "ckpt")
    resumed = tiny_run(tmp_path / "b", resume=True)
    assert (resumed.epoch, resumed.batches_done, resumed.step) == (2, 0, 8)
    resumed.train()
    for a, b in zip(full.raw_model.state_dict().values(), resumed.raw_model.state_dict().values()):
        assert torch.equal(a, b)


def paced():
    """
    The environment of a run that a test interrupts: one thread, so that a step takes about as long
    on any CPU; the runs are long enough that the signal, sent after the first step, cannot come
    after their end.
    """
    return dict(os.environ, OMP_NUM_THREADS="1")


def wait_for_progress(proc, timeout=300):
    """
    Read proc's stderr (a binary pipe) until run.py's progress bar names a loss: the first step
    is done, so the signal handlers are in place. Returns what was read; fails if the run ends or
    says nothing for `timeout` seconds first.
    """
    seen, fd = b"", proc.stderr.fileno()
    while b"train loss" not in seen:
        ready, _, _ = select.select([fd], [], [], timeout)
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            proc.kill()
            pytest.fail(f"no progress on stderr ({'the run ended' if ready else 'timed out'}): {seen[-3000:]!r}")
        seen += chunk
    return seen


def interrupted(cwd, args, signum):
    """Run run.py with args, send signum once it has trained a step; (returncode, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, RUN] + args, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=paced())
    seen = wait_for_progress(proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out.decode(errors="replace"), (seen + err).decode(errors="replace")


def test_sigint_checkpoints_and_resume_completes(corpus):
    # 62 rows, 16 a step: 4 steps an epoch, 40 in all, the signal after the first
    args = ["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "10",
            "--batch_size", "16"] + CPU
    returncode, out, err = interrupted(corpus, args, signal.SIGINT)
    assert returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    assert not os.path.exists(corpus / "p.params"), "an interrupted run must not write the params"
    state = torch.load(corpus / "p.params.ckpt", weights_only=True)
    assert 0 < state["step"] < 40

    # without --resume the checkpoint is protected
    again = cli(args, corpus)
    assert again.returncode != 0 and "--resume" in again.stderr and "Traceback" not in again.stderr

    done = cli(args + ["--resume"], corpus)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from p.params.ckpt: epoch {state['epoch'] + 1}, step {state['step']}" in done.stdout
    steps = re.search(r"trained 10 epochs, (\d+) steps \((\d+) in this run\)", done.stdout)
    assert steps and int(steps.group(1)) == 40 and int(steps.group(2)) == 40 - state["step"]
    assert os.path.exists(corpus / "p.params") and not os.path.exists(corpus / "p.params.ckpt")


def test_two_process_torchrun_resumes_after_ctrl_c_to_the_same_bytes(corpus):
    """
    Ctrl-C in a terminal signals torchrun and both ranks: they agree on the step to stop
    at, checkpoint, and the resumed run ends with the uninterrupted one's params. (A rank
    that stopped alone would leave the other waiting in a collective: the timeouts catch it.)
    """
    def torchrun(params, *extra, **kw):
        # --standalone: a free port of its own, so that two suites on one host do not collide
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", RUN,
               "pretrain", "vanilla", "wiki.txt", "--writing_params_path", params, "--max_epochs", "6",
               "--batch_size", "16"] + CPU + list(extra)  # 62 rows, 8 a rank: 4 steps an epoch, 24 in all
        return subprocess.Popen(cmd, cwd=corpus, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=paced(), **kw)

    def finished(proc):
        out, err = proc.communicate(timeout=300)
        return out.decode(errors="replace"), err.decode(errors="replace")

    out, err = finished(torchrun("full.params"))
    assert out.count("trained 6 epochs, 24 steps") == 1, err[-3000:]  # only rank 0 reports
    proc = torchrun("cut.params", start_new_session=True)
    seen = wait_for_progress(proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole process group
    out, err = finished(proc)
    err = seen.decode(errors="replace") + err
    assert proc.returncode != 0, err[-3000:]
    assert "interrupted by SIGINT" in err and "Traceback" not in err.split("interrupted by")[0]
    assert not os.path.exists(corpus / "cut.params")
    stopped = torch.load(corpus / "cut.params.ckpt", weights_only=True)
    assert 1 <= stopped["step"] < 24 and len(stopped["rng"]) == 2
    out, err = finished(torchrun("cut.params", "--resume"))
    assert f"resuming from cut.params.ckpt: epoch {stopped['epoch'] + 1}, step {stopped['step']}" in out, err[-3000:]
    full, resumed = (torch.load(corpus / p, weights_only=True) for p in ("full.params", "cut.params"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    ev = cli(["evaluate", "vanilla", "wiki.txt", "--reading_params_path", "cut.params",
              "--eval_corpus_path", "train.tsv", "--outputs_path", "d.predictions"] + CPU, corpus)
    assert ev.returncode == 0 and "Correct: " in ev.stdout, ev.stderr


# ---------------------------------------------------------------- bad input

def one_clean_line(out, *needles):
    assert out.returncode != 0
    err = out.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The corpus and params of both variants, trained once for the module."""
    d = tmp_path_factory.mktemp("trained")
    (d / "wiki.txt").write_text(WIKI, encoding="utf-8")
    (d / "train.tsv").write_text(TRAIN, encoding="utf-8")
    for variant, extra in (("vanilla", []), ("perceiver", ["--bottleneck_dim", "16"])):
        out = cli(["finetune", variant, "wiki.txt", "--writing_params_path", f"{variant}.params",
                   "--finetune_corpus_path", "train.tsv", "--max_epochs", "1"] + extra + CPU, d)
        assert out.returncode == 0, out.stderr
    return d


@pytest.fixture
def params(trained, tmp_path):
    """A copy of them for one test, which may damage it."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path


def evaluate(corpus, variant="vanilla", params="vanilla.params", eval_path="train.tsv", out="o.predictions", extra=()):
    return cli(["evaluate", variant, "wiki.txt", "--reading_params_path", params, "--eval_corpus_path", eval_path,
                "--outputs_path", out] + list(extra) + CPU, corpus)


def test_missing_file(corpus):
    # in a real process once: the exit status and the one line a user sees, nothing else on stderr
    one_clean_line(cli_process(["pretrain", "vanilla", "nope.txt", "--writing_params_path", "p"], corpus),
                   "nope.txt", "no such file")


def test_missing_flags(corpus):
    one_clean_line(cli(["finetune", "vanilla", "wiki.txt", "--writing_params_path", "p"], corpus),
                   "finetune needs --finetune_corpus_path")
    one_clean_line(cli(["evaluate", "vanilla", "wiki.txt"], corpus),
                   "evaluate needs --reading_params_path and --eval_corpus_path and --outputs_path")


def test_out_of_range_numbers(corpus):
    base = ["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p"]
    one_clean_line(cli(base + ["--batch_size", "0"], corpus), "--batch_size must be at least 1, got 0")
    one_clean_line(cli(base + ["--warmup_epochs", "-1"], corpus), "--warmup_epochs must not be negative")


def test_outputs_folder_missing(params):
    one_clean_line(evaluate(params, out="no/such/dir/o.predictions"), "no/such/dir", "does not exist")


def unchanged(folder):
    """The bytes of every file in folder, to compare after a refused command."""
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder)) if (folder / f).is_file()}


@pytest.mark.parametrize("case", ["predictions over params", "predictions over questions",
                                  "params over wiki.txt", "params over the training file",
                                  "params over the params read", "a link to the corpus"])
def test_outputs_never_overwrite_inputs(params, case):
    """The same file by another name counts: the check compares files, not strings."""
    (params / "link.params").symlink_to(params / "wiki.txt")
    train = ["finetune", "vanilla", "wiki.txt", "--finetune_corpus_path", "train.tsv", "--max_epochs", "1"]
    out = {
        "predictions over params": lambda: evaluate(params, out="./vanilla.params"),
        "predictions over questions": lambda: evaluate(params, out=str(params / "sub" / ".." / "train.tsv")),
        "params over wiki.txt": lambda: cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path",
                                             str(params / "wiki.txt")], params),
        "params over the training file": lambda: cli(train + ["--writing_params_path", "train.tsv"], params),
        "params over the params read": lambda: cli(train + ["--reading_params_path", "vanilla.params",
                                                            "--writing_params_path", "vanilla.params"], params),
        "a link to the corpus": lambda: cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path",
                                             "link.params"], params),
    }
    (params / "sub").mkdir()
    before = unchanged(params)
    one_clean_line(out[case](), "refusing to overwrite an input")
    assert unchanged(params) == before


def test_no_epochs_and_no_questions_are_refused_before_any_work(params):
    before = unchanged(params)
    for n in ("0", "-3"):
        one_clean_line(cli(["finetune", "vanilla", "wiki.txt", "--writing_params_path", "vanilla.params",
                            "--finetune_corpus_path", "train.tsv", "--max_epochs", n], params),
                       f"--max_epochs must be at least 1, got {n}")
    (params / "o.predictions").write_text("Paris\n")
    (params / "blank.tsv").write_text("\n \n")
    before = unchanged(params)
    one_clean_line(evaluate(params, eval_path="blank.tsv"), "blank.tsv", "no questions")
    assert unchanged(params) == before


def test_an_output_that_is_a_folder_is_refused_before_training(params):
    (params / "out.params").mkdir()
    one_clean_line(cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "out.params"], params),
                   "out.params", "is a folder")
    one_clean_line(evaluate(params, out="out.params"), "out.params", "is a folder")


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(params):
    """A file size limit makes every write past 1 MB fail (EFBIG) as a full disk would (ENOSPC)."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    out = subprocess.run([sys.executable, RUN, "pretrain", "vanilla", "wiki.txt", "--writing_params_path",
                          "big.params", "--max_epochs", "1"] + CPU, cwd=params, capture_output=True, text=True,
                         preexec_fn=limit)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    # the finished run's params come first (13 MB), then its checkpoint (40 MB) is tried: both too large
    assert out.stderr.strip().splitlines()[-1] == ("run.py: error: big.params: cannot write: File too large; no "
                                                   "checkpoint could be written either: make room, then rerun with "
                                                   "--resume")
    assert not [f for f in os.listdir(params) if f.startswith("big.params")], os.listdir(params)


def test_mixed_tsv(params):
    (params / "mixed.tsv").write_text("Where was Alice Smith born?\tParis\nWhere was Bob Jones born?\n")
    one_clean_line(evaluate(params, eval_path="mixed.tsv"), "mixed.tsv:2:", "lacks a tab")
    one_clean_line(cli(["finetune", "vanilla", "wiki.txt", "--writing_params_path", "x.params",
                        "--finetune_corpus_path", "mixed.tsv"] + CPU, params), "mixed.tsv:2:", "no tab")


def test_empty_answer(params):
    (params / "empty.tsv").write_text("Where was Alice Smith born?\tParis\nWhere was Bob Jones born?\t \n")
    one_clean_line(evaluate(params, eval_path="empty.tsv"), "empty.tsv:2:", "empty answer")


def test_unknown_character(params):
    (params / "odd.tsv").write_text("Where was Alice Smith born?\tParis\nWhere was Zoë born?\tLyon\n")
    one_clean_line(evaluate(params, eval_path="odd.tsv"), "odd.tsv:2", "'Z'")


def test_params_of_the_other_variant(params):
    one_clean_line(evaluate(params, params="perceiver.params"), "perceiver params", "vanilla model")
    one_clean_line(evaluate(params, variant="perceiver", params="vanilla.params", extra=["--bottleneck_dim", "16"]),
                   "vanilla params", "perceiver with --bottleneck_dim 16")
    one_clean_line(evaluate(params, variant="perceiver", params="perceiver.params", extra=["--bottleneck_dim", "64"]),
                   "bottleneck_dim 16", "--bottleneck_dim 64")


def test_truncated_and_foreign_params(params):
    data = (params / "vanilla.params").read_bytes()
    (params / "cut.params").write_bytes(data[:len(data) // 2])
    one_clean_line(evaluate(params, params="cut.params"), "cut.params", "not a params file")
    one_clean_line(evaluate(params, params="train.tsv"), "train.tsv", "not a params file")


def test_crlf_blank_lines_and_no_final_newline_just_work(params):
    (params / "crlf.tsv").write_bytes(b"Where was Alice Smith born?\tParis\r\n\r\nWhere was Bob Jones born?\tLyon")
    out = evaluate(params, eval_path="crlf.tsv")
    assert out.returncode == 0, out.stderr
    # the start-up line: a student whose VM fell back to CPU sees it at once
    assert re.search(r"^evaluate vanilla on cpu \(\d+ threads, \w+\), float32: 2 questions$", out.stdout, re.M)
    assert "out of 2.0" in out.stdout
    assert len(open(params / "o.predictions").read().split("\n")) == 3


def test_fuzz_readers_give_a_result_or_a_clean_error(tmp_path):
    """
    Random text and random bytes: each reader gives a result or an InputError, whose one line names
    the line (datasets, given text) or the file (readers of files); never a raw UnicodeDecodeError
    (also a ValueError), which would reach the user as a traceback.
    """
    rng = random.Random(0)
    pre = dataset.CharCorruptionDataset(WIKI, 32)
    alphabet = "ab \t\r\n?" + "\u25A1\u2047é"
    not_utf8 = 0
    for i in range(300):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(60))) if i % 2 else \
            "".join(rng.choice(alphabet) for _ in range(rng.randrange(60))).encode("utf-8")
        text = raw.decode("utf-8", errors="replace")
        for build in (lambda: dataset.CharCorruptionDataset(text, 32), lambda: dataset.NameDataset(pre, text)):
            try:
                ds = build()
                for j in range(len(ds)):
                    ds[j]
            except inputs.InputError as e:
                assert str(e).startswith("line "), e
        path = tmp_path / f"f{i}.tsv"
        path.write_bytes(raw)
        try:
            rows = inputs.read_questions(str(path))
            utils.evaluate_places(str(path), ["x"] * len(rows))
        except inputs.InputError as e:
            assert str(e).startswith(f"{path}:") and "\n" not in str(e), e
            not_utf8 += "not UTF-8 text" in str(e)
    assert not_utf8 > 50  # the random bytes reach the decoding's error, not only the parser's
