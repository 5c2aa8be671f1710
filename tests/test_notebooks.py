"""Both notebooks run headless at a tiny size (A5_QUICK=1)."""
import os
import shutil
import sys
import zipfile

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def execute(path_or_nb, cwd, env):
    """Runs a notebook in cwd with env (a value None removes the variable); returns its text outputs."""
    nb = nbformat.read(path_or_nb, as_version=4) if isinstance(path_or_nb, str) else path_or_nb
    old = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if v is not None})
    for k in [k for k, v in env.items() if v is None]:
        os.environ.pop(k, None)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return outputs(nb)


def outputs(nb):
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def quick_env():
    # the notebooks' shell cells run `python`: make it this interpreter
    return {"A5_QUICK": "1", "A5_ALLOW_CPU": None,
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def test_play_char_notebook():
    out = execute(os.path.join(ROOT, "mingpt-demo", "play_char.ipynb"), os.path.join(ROOT, "mingpt-demo"), quick_env())
    assert "number of parameters" in out
    assert "Where was " in out  # the sample starts from this context


def colab_copy(tmp_path):
    """The files of the repository that the Colab notebook uses, copied into tmp_path."""
    for name in ("src", "data"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("london_baseline.py", "collect_submission.sh", "requirements.txt", "a5_colab.ipynb"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    return str(tmp_path / "a5_colab.ipynb")


def test_colab_notebook_runs_the_handout_commands(tmp_path):
    path = colab_copy(tmp_path)
    env = quick_env()
    env["A5_DATA_DIR"] = str(tmp_path / "data")  # the synthetic corpus: seconds per epoch
    out = execute(path, str(tmp_path), env)
    assert out.count("Correct: ") == 4, out  # London, no pretraining, vanilla, perceiver
    assert out.count("no targets provided") == 3, out
    assert "no checkpoint at vanilla.pretrain.params.ckpt: starting from the beginning" in out  # --resume
    names = zipfile.ZipFile(tmp_path / "assignment5.zip").namelist()
    assert "perceiver.pretrain.test.predictions" in names and "src/run.py" in names
    assert len(names) == len([f for f in os.listdir(tmp_path / "src") if f.endswith(".py")]) + 9
    # the synthetic corpus has 50 dev and 10 test questions: the collect step says so and fails,
    # and A5_QUICK alone lets the notebook end
    assert "vanilla.nopretrain.dev.predictions: 50 lines" in out, out
    assert "perceiver.pretrain.test.predictions: 10 lines" in out, out
    assert "collect_submission.sh refused these outputs (exit status 1)" in out, out

    # a recycled runtime runs the cells again: finished steps are skipped, evaluation reruns
    nb = nbformat.read(path, as_version=4)
    last = next(i for i, c in enumerate(nb.cells) if "vanilla.nopretrain.test.predictions" in c.source)
    nb.cells = nb.cells[:last + 1]
    out = execute(nb, str(tmp_path), env)
    assert "vanilla.model.params exists: skipped" in out, out
    assert "trained " not in out and out.count("Correct: ") == 2, out


def test_colab_notebook_stops_without_a_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = quick_env()
    env["A5_QUICK"] = None
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="Change runtime type > T4 GPU"):
        execute(colab_copy(tmp_path), str(tmp_path), env)


def test_colab_notebook_never_trains_on_the_synthetic_corpus_unasked(tmp_path):
    env = quick_env()
    env["A5_DATA_DIR"] = None  # the repository's data/ is there, but not asked for
    with pytest.raises(nbclient.exceptions.CellExecutionError) as e:
        execute(colab_copy(tmp_path), str(tmp_path), env)
    assert "no wiki.txt, birth_places_train.tsv, birth_dev.tsv, birth_test_inputs.tsv in " + os.path.realpath(tmp_path) in str(e.value)
    assert not list(tmp_path.glob("*.params")) and not (tmp_path / "expt").exists()


def test_colab_notebook_has_the_student_path():
    """Cells in the order a fresh runtime needs them, with Colab's own steps (not run headless)."""
    cells = nbformat.read(os.path.join(ROOT, "a5_colab.ipynb"), as_version=4).cells
    assert cells[0].cell_type == "markdown" and "Change runtime type > T4 GPU" in cells[0].source
    src = [c.source for c in cells if c.cell_type == "code"]

    def first(text):
        return next(i for i, s in enumerate(src) if text in s)

    steps = ["REPO_URL =", 'drive.mount("/content/drive")', "git clone", "Change runtime type",
             "-m pip install", "files.upload()", "os.chdir(WORK)", "%tensorboard --logdir expt",
             "london_baseline.py", "run.py finetune vanilla", "run.py pretrain vanilla",
             "run.py pretrain perceiver {DATA}/wiki.txt --bottleneck_dim 64 --pretrain_lr 6e-3",
             "collect_submission.sh"]
    order = [first(s) for s in steps]
    assert order == sorted(order), dict(zip(steps, order))
    assert all(s.count("train(f\"python") == s.count("{TRAIN}") for s in src)  # every training command resumes
    assert 'TRAIN = "--resume"' in src[first("TRAIN =")]
