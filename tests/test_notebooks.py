"""Both notebooks run headless at a tiny size (A5_QUICK=1)."""
import os
import shutil
import sys
import zipfile

import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def execute(path, cwd, env):
    nb = nbformat.read(path, as_version=4)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def quick_env():
    # the notebooks' shell cells run `python`: make it this interpreter
    return {"A5_QUICK": "1", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def test_play_char_notebook():
    out = execute(os.path.join(ROOT, "mingpt-demo", "play_char.ipynb"), os.path.join(ROOT, "mingpt-demo"), quick_env())
    assert "number of parameters" in out
    assert "Where was " in out  # the sample starts from this context


def test_colab_notebook_runs_the_handout_commands(tmp_path):
    for name in ("src", "data"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("london_baseline.py", "collect_submission.sh", "a5_colab.ipynb"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    env = quick_env()
    env["A5_DATA_DIR"] = str(tmp_path / "data")  # the synthetic corpus: seconds per epoch
    out = execute(str(tmp_path / "a5_colab.ipynb"), str(tmp_path), env)
    assert out.count("Correct: ") == 4, out  # London, no pretraining, vanilla, perceiver
    assert out.count("no targets provided") == 3, out
    names = zipfile.ZipFile(tmp_path / "assignment5.zip").namelist()
    assert "perceiver.pretrain.test.predictions" in names and "src/run.py" in names
    assert len(names) == len([f for f in os.listdir(tmp_path / "src") if f.endswith(".py")]) + 9
