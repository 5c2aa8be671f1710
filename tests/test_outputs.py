"""
Nothing is lost by mistake: outputs land where their path points (through a link, on a
device) with their permission bits; a bad output path, a busy params path, a wrong
vocabulary or a Ctrl-C outside training is one line before or instead of a traceback.
"""
import contextlib
import fcntl
import io
import os
import re
import runpy
import shutil
import stat
import subprocess
import sys

import pytest
import torch

import checkpoint
import dataset
import decoding
import inputs
import run
import utils
from conftest import ROOT
from test_robustness import RUN, TRAIN, WIKI, cli, one_clean_line, unchanged



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The corpus, vanilla params finetuned for one epoch, and a checkpoint of that run (--save_every 1)."""
    d = tmp_path_factory.mktemp("trained")
    (d / "wiki.txt").write_text(WIKI, encoding="utf-8")
    (d / "train.tsv").write_text(TRAIN, encoding="utf-8")
    out = cli(["finetune", "vanilla", "wiki.txt", "--writing_params_path", "vanilla.params", "--device", "cpu",
               "--finetune_corpus_path", "train.tsv", "--max_epochs", "1", "--save_every", "1"], d)
    assert out.returncode == 0, out.stderr
    shutil.rmtree(d / "expt")
    return d


@pytest.fixture
def params(trained, tmp_path):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path


def evaluate(d, out="o.predictions", params="vanilla.params", wiki="wiki.txt", extra=()):
    return cli(["evaluate", "vanilla", wiki, "--reading_params_path", params, "--eval_corpus_path", "train.tsv",
                "--outputs_path", out, "--device", "cpu"] + list(extra), d)


def pretrain(d, *extra):
    return cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1",
                "--device", "cpu"] + list(extra), d)


# ---------------------------------------------------------------- where outputs land

@pytest.mark.parametrize("before,umask,after", [(0o644, 0o022, 0o644), (0o640, 0o022, 0o640),
                                                (None, 0o022, 0o644), (None, 0o077, 0o600)])
def test_atomic_write_keeps_the_permission_bits(tmp_path, before, umask, after):
    """mkstemp makes 0600 files: an old file keeps its bits, a new one gets 0666 less the umask."""
    path = tmp_path / "out.txt"
    if before is not None:
        path.write_text("old\n")
        path.chmod(before)
    old = os.umask(umask)
    try:
        utils.atomic_write(str(path), lambda f: f.write("new\n"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == after and path.read_text() == "new\n"


def test_atomic_write_writes_through_a_link_to_its_target(tmp_path):
    """A link into another folder (Google Drive) stays a link; its target gets the new content, atomically there."""
    (tmp_path / "drive").mkdir()
    (tmp_path / "here").mkdir()
    target, link = tmp_path / "drive" / "out.txt", tmp_path / "here" / "out.txt"
    target.write_text("old\n")
    link.symlink_to(target)
    utils.atomic_write(str(link), lambda f: f.write("new\n"))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path / "drive") == ["out.txt"] and os.listdir(tmp_path / "here") == ["out.txt"]


def test_atomic_write_writes_into_a_fifo_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader already there: the write does not wait
    try:
        utils.atomic_write(str(fifo), lambda f: f.write("new\n"))
        assert os.read(reader, 100) == b"new\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]


def test_predictions_to_a_device_are_written_in_place(params):
    """--outputs_path /dev/null must not replace the system's /dev/null (as root on Colab it would)."""
    null = params / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device here: {e}")
    out = evaluate(params, out="null")
    assert out.returncode == 0, out.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert not [f for f in os.listdir(params) if f.endswith(".tmp")]


def test_predictions_through_a_link_land_in_its_target(params):
    (params / "drive").mkdir()
    target = params / "drive" / "dev.predictions"
    target.write_text("old\n")
    (params / "dev.predictions").symlink_to(target)
    out = evaluate(params, out="dev.predictions")
    assert out.returncode == 0, out.stderr
    assert (params / "dev.predictions").is_symlink() and len(target.read_text().splitlines()) == 2


# ---------------------------------------------------------------- bad output paths, before any work

@pytest.mark.parametrize("function,path", [("pretrain", ""), ("pretrain", "newdir/"), ("pretrain", "newdir/."),
                                           ("evaluate", ""), ("evaluate", "newdir/")])
def test_output_paths_that_name_no_file_are_refused_before_any_work(params, function, path):
    before = unchanged(params)
    if function == "pretrain":
        out = cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", path, "--max_epochs", "1",
                   "--device", "cpu"], params)
        flag = "--writing_params_path"
    else:
        out = evaluate(params, out=path)
        flag = "--outputs_path"
    err = one_clean_line(out, "not a file name", flag)
    assert "trained" not in out.stdout and "decoded" not in out.stdout, err
    assert unchanged(params) == before and sorted(os.listdir(params)) == sorted(before)


# ---------------------------------------------------------------- one run per params path

def hold(path):
    """Take the lock a run takes on its params path, as a run that is still training holds it."""
    f = open(path, "a")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def test_a_second_run_on_a_busy_params_path_is_refused_at_once(corpus):
    with hold(corpus / "p.params.lock"):
        out = pretrain(corpus)
        one_clean_line(out, "p.params", "another run")
        assert "trained" not in out.stdout and not os.path.exists(corpus / "p.params")
    out = pretrain(corpus)  # once the first is done, the path is free
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(corpus / "p.params.lock"), "a run that ended cleanly removes its lock file"


def test_the_lock_file_is_never_an_input(corpus):
    """The run removes its lock file at its end: it must not be the corpus."""
    (corpus / "wiki.lock").write_text(WIKI, encoding="utf-8")
    out = cli(["pretrain", "vanilla", "wiki.lock", "--writing_params_path", "wiki", "--max_epochs", "1",
               "--device", "cpu"], corpus)
    one_clean_line(out, "wiki.lock", "refusing to overwrite an input")
    assert (corpus / "wiki.lock").read_text(encoding="utf-8") == WIKI


def test_a_lock_file_left_by_a_killed_run_holds_nothing(corpus):
    """A killed run cannot remove its lock file, but the kernel drops its lock: the next run goes ahead."""
    (corpus / "p.params.lock").write_text("")
    out = pretrain(corpus)
    assert out.returncode == 0, out.stderr
    (corpus / "p.params.ckpt").write_text("")
    one_clean_line(pretrain(corpus), "p.params.ckpt", "--resume")  # a run that fails lets its lock go too
    assert not os.path.exists(corpus / "p.params.lock")
    with hold(corpus / "p.params.lock"):
        pass


# ---------------------------------------------------------------- scoring

def test_gold_answers_with_trailing_whitespace_count(tmp_path):
    """The course's evaluate_places strips each line: 'London ' in the file is London."""
    path = tmp_path / "dev.tsv"
    path.write_text("Where was A born?\tLondon \nWhere was B born?\tParis  \r\nWhere was C born?\tRome\n")
    assert utils.evaluate_places(str(path), ["London", "Paris", "Rome"]) == (3.0, 3.0)
    assert utils.evaluate_places(str(path), ["London ", "Paris", "Rome "]) == (3.0, 1.0)  # predictions as they are


def test_london_on_a_dev_set_whose_lines_end_in_a_space(data_dir, tmp_path):
    with open(os.path.join(data_dir, "birth_dev.tsv"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    (tmp_path / "dev.tsv").write_text("".join(line + " \n" for line in lines), encoding="utf-8")
    assert utils.evaluate_places(str(tmp_path / "dev.tsv"), ["London"] * 500) == (500.0, 25.0)


# ---------------------------------------------------------------- one line, not a traceback

@pytest.mark.parametrize("device", ["cuda", "mps", "gpu", "cuda:7"])
def test_a_device_that_is_not_here_is_one_line(corpus, device):
    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    if kind == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    out = cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1",
               "--device", device], corpus)
    one_clean_line(out, "--device", device)
    assert not os.path.exists(corpus / "expt")


@pytest.mark.parametrize("flag,value", [("--num_workers", "-1"), ("--finetune_lr", "nan"), ("--finetune_lr", "-6e-4"),
                                        ("--finetune_lr", "0"), ("--pretrain_lr", "-6e-3"), ("--pretrain_lr", "inf"),
                                        ("--final_epochs", "nan"), ("--final_epochs", "0"), ("--final_epochs", "-5"),
                                        ("--warmup_epochs", "nan"), ("--warmup_epochs", "inf")])
def test_numbers_out_of_range_are_one_line_before_any_work(corpus, flag, value):
    function = ["finetune", "vanilla", "wiki.txt", "--finetune_corpus_path", "train.tsv"] if flag == "--finetune_lr" \
        else ["pretrain", "vanilla", "wiki.txt"]
    out = cli(function + ["--writing_params_path", "p.params", "--max_epochs", "1", "--device", "cpu",
                          f"{flag}={value}"], corpus)
    one_clean_line(out, flag, f"got {float(value) if flag != '--num_workers' else value}")
    assert "trained" not in out.stdout and not os.path.exists(corpus / "p.params")


def test_a_current_folder_where_tensorboard_cannot_write_is_refused_before_any_work(corpus):
    """TensorBoard writes expt/ in the current folder, wherever the params go."""
    (corpus / "out").mkdir()
    (corpus / "expt").write_text("not a folder\n")
    out = cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", str(corpus / "out" / "p.params"),
               "--max_epochs", "1", "--device", "cpu"], corpus)
    one_clean_line(out, "expt", "TensorBoard")
    assert not os.listdir(corpus / "out")


def test_a_read_only_current_folder_is_refused_before_any_work(corpus):
    if os.geteuid() == 0:
        pytest.skip("permissions do not bind root")
    (corpus / "out").mkdir()
    corpus.chmod(0o555)
    try:
        out = cli(["pretrain", "vanilla", str(corpus / "wiki.txt"), "--writing_params_path",
                   str(corpus / "out" / "p.params"), "--max_epochs", "1", "--device", "cpu"], corpus)
    finally:
        corpus.chmod(0o755)
    one_clean_line(out, "expt", "TensorBoard")
    assert not os.listdir(corpus / "out")


def collect(d, **env):
    out = subprocess.run(["bash", os.path.join(ROOT, "collect_submission.sh"), str(d)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHON=sys.executable, **env))
    return out, [line for line in out.stderr.splitlines() if line.strip()]


def test_collect_submission_where_the_zip_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "assignment5.zip.tmp").mkdir()  # what a read-only folder does to the zip's write, also as root
    out, problems = collect(tmp_path)
    assert out.returncode != 0 and len(problems) == 1 and "Traceback" not in out.stderr, out.stderr
    assert problems[0].startswith("collect_submission.sh: ") and "assignment5.zip" in problems[0], problems


def test_collect_submission_in_a_read_only_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("permissions do not bind root")
    tmp_path.chmod(0o555)
    try:
        out, problems = collect(tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert out.returncode != 0 and len(problems) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "assignment5.zip" in problems[0]


def script(args, cwd):
    """
    `python run.py ARGS` in folder cwd, in this process: run.py's __main__ block runs too (its Ctrl-C
    handler). A KeyboardInterrupt that escapes it is what a user would see as a traceback.
    """
    out, err, code = io.StringIO(), io.StringIO(), 0
    here, argv = os.getcwd(), sys.argv
    try:
        os.chdir(cwd)
        sys.argv = [RUN] + list(args)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(RUN, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code, _ = "escaped", err.write("Traceback (most recent call last):\nKeyboardInterrupt\n")
    finally:
        os.chdir(here)
        sys.argv = argv
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_evaluating_is_one_line(params, monkeypatch):
    monkeypatch.setattr(decoding, "predict_places", ctrl_c)
    out = script(["evaluate", "vanilla", "wiki.txt", "--reading_params_path", "vanilla.params",
                  "--eval_corpus_path", "train.tsv", "--outputs_path", "o.predictions", "--device", "cpu"], params)
    assert out.returncode == 130 and out.stderr.strip() == "run.py: interrupted", out.stderr
    assert not os.path.exists(params / "o.predictions")


def test_ctrl_c_while_reading_the_corpus_is_one_line(corpus, monkeypatch):
    monkeypatch.setattr(inputs, "read_text", ctrl_c)
    out = script(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1",
                  "--device", "cpu"], corpus)
    assert out.returncode == 130 and out.stderr.strip() == "run.py: interrupted", out.stderr


def test_ctrl_c_while_saving_the_params_is_one_line_and_the_checkpoint_resumes(corpus, monkeypatch):
    monkeypatch.setattr(utils, "save_atomic", ctrl_c)  # run.save_params's; the trainer's checkpoints have their own
    out = script(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params", "--max_epochs", "1",
                  "--device", "cpu"], corpus)
    assert out.returncode == 130 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("run.py: interrupted while saving p.params; the finished run's "
                                                   "checkpoint is in p.params.ckpt: rerun with --resume")
    assert not os.path.exists(corpus / "p.params") and os.path.exists(corpus / "p.params.ckpt")
    monkeypatch.undo()
    done = pretrain(corpus, "--resume")
    assert done.returncode == 0 and os.path.exists(corpus / "p.params"), done.stderr


def test_ctrl_c_while_importing_is_one_line(corpus):
    """A real process: a stand-in tqdm that is 'interrupted' as it is imported (torch takes seconds to import)."""
    (corpus / "fake").mkdir()
    (corpus / "fake" / "tqdm.py").write_text("raise KeyboardInterrupt\n")
    out = subprocess.run([sys.executable, RUN, "pretrain", "vanilla", "wiki.txt", "--writing_params_path", "p.params",
                          "--max_epochs", "1", "--device", "cpu"], cwd=corpus, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(corpus / "fake")))
    assert out.returncode == 130 and out.stderr.strip() == "run.py: interrupted", out.stderr


def test_a_checkpoint_missing_a_key_is_one_line(params):
    state = torch.load(params / "vanilla.params.ckpt.epoch1", weights_only=True)
    del state["optimizer"]
    torch.save(state, params / "vanilla.params.ckpt")
    with pytest.raises(checkpoint.CheckpointError, match="optimizer"):
        checkpoint.load(params / "vanilla.params.ckpt")
    out = cli(["finetune", "vanilla", "wiki.txt", "--writing_params_path", "vanilla.params", "--device", "cpu",
               "--finetune_corpus_path", "train.tsv", "--max_epochs", "1", "--resume"], params)
    one_clean_line(out, "vanilla.params.ckpt: cannot resume", "optimizer")


# ---------------------------------------------------------------- the vocabulary travels with the params

def vocab_hash(text):
    ds = dataset.CharCorruptionDataset(text, 128)
    return run.vocab_sha256(ds)


def test_params_carry_their_vocabulary_where_the_course_loader_ignores_it(params):
    import argparse
    sd = torch.load(params / "vanilla.params", weights_only=True)
    assert sd._metadata[""]["a5_vocab_sha256"] == vocab_hash(WIKI)
    assert not [k for k in sd if "vocab" in k]
    ds = dataset.CharCorruptionDataset(WIKI, 128)
    gpt = run.build_model(argparse.Namespace(variant="vanilla", plain=False), ds.vocab_size)
    gpt.load_state_dict(torch.load(params / "vanilla.params"))  # the course's loader: strict, default torch.load


@pytest.mark.parametrize("function", ["evaluate", "finetune"])
def test_params_of_another_vocabulary_of_the_same_size_are_refused(params, function):
    (params / "other.txt").write_text(WIKI.replace("z", "Q"), encoding="utf-8")  # one character swapped
    assert dataset.CharCorruptionDataset(WIKI.replace("z", "Q"), 128).vocab_size == \
        dataset.CharCorruptionDataset(WIKI, 128).vocab_size
    if function == "evaluate":
        out = evaluate(params, wiki="other.txt")
    else:
        out = cli(["finetune", "vanilla", "other.txt", "--reading_params_path", "vanilla.params", "--device", "cpu",
                   "--writing_params_path", "f.params", "--finetune_corpus_path", "train.tsv", "--max_epochs", "1"],
                  params)
    one_clean_line(out, "vanilla.params", "another vocabulary", "other.txt")


def test_params_without_a_vocabulary_still_load(params):
    """The course's params carry no fingerprint: only their shapes can be checked."""
    sd = torch.load(params / "vanilla.params", weights_only=True)
    del sd._metadata[""]["a5_vocab_sha256"]
    torch.save(sd, params / "course.params")
    torch.save(dict(sd), params / "plain.params")  # no _metadata at all
    for name in ("course.params", "plain.params"):
        out = evaluate(params, params=name)
        assert out.returncode == 0 and "Correct: " in out.stdout, out.stderr


def state_dict(rows, vocab=None, perceiver=False):
    """What collect_submission.sh looks at: the embedding's rows, the Perceiver's C, the fingerprint."""
    sd = torch.nn.Module().state_dict()  # an OrderedDict with its _metadata
    sd["tok_emb.weight"] = torch.zeros(rows, 8)
    sd["pos_emb"] = torch.zeros(1, 16, 8)  # the vanilla model's and the Perceiver's (rope has none)
    if perceiver:
        sd["down_block.C"] = torch.zeros(1, 64, 8)
    if vocab is not None:
        sd._metadata[""]["a5_vocab_sha256"] = vocab
    return sd


def course_vocab_in_collect():
    with open(os.path.join(ROOT, "collect_submission.sh"), encoding="utf-8") as f:
        return re.search(r'COURSE_VOCAB_SHA256 = "([0-9a-f]{64})"', f.read()).group(1)


def test_collect_submission_checks_the_vocabulary_of_each_params_file(tmp_path):
    for name, n in {"vanilla.nopretrain.dev.predictions": 500, "vanilla.nopretrain.test.predictions": 437,
                    "vanilla.pretrain.dev.predictions": 500, "vanilla.pretrain.test.predictions": 437,
                    "perceiver.pretrain.dev.predictions": 500, "perceiver.pretrain.test.predictions": 437}.items():
        (tmp_path / name).write_text("London\n" * n)
    synthetic = vocab_hash(open(os.path.join(ROOT, "data", "wiki.txt"), encoding="utf-8").read())
    torch.save(state_dict(256, course_vocab_in_collect()), tmp_path / "vanilla.model.params")
    torch.save(state_dict(256, "0" * 64), tmp_path / "vanilla.finetune.params")  # another corpus of the same size
    torch.save(state_dict(74, synthetic, perceiver=True), tmp_path / "perceiver.finetune.params")  # data/wiki.txt's
    out, problems = collect(tmp_path)
    assert out.returncode != 0 and len(problems) == 2, out.stderr
    assert "vanilla.finetune.params: trained over another vocabulary of 256 ids" in out.stderr
    assert "perceiver.finetune.params: trained over another vocabulary of 74 ids" in out.stderr
    assert "vanilla.model.params: the course's vocabulary (wiki.txt)" in out.stdout


def test_the_course_vocabulary_in_collect_submission_is_wiki_txt_s(wiki_text):
    assert course_vocab_in_collect() == vocab_hash(wiki_text)
