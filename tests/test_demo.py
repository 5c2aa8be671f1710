"""The README's first command (run.sh's demo), shortened to one epoch per phase."""
import os
import re
import shutil
import subprocess
import sys

from conftest import ROOT


def test_run_sh_demo_prints_the_table(tmp_path):
    """The README's first command, shortened: the whole pipeline on the synthetic corpus, ending in a table."""
    for name in ("src", "data"):
        shutil.copytree(os.path.join(ROOT, name), tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("london_baseline.py", "run.sh"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, PYTHON=sys.executable, TRAIN_FLAGS="--max_epochs 1",
               PRETRAIN_FLAGS="--max_epochs 1 --batch_size 128 --pretrain_lr 1e-3")
    out = subprocess.run(["bash", str(tmp_path / "run.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^\| (.+?) \| (\S+)% \((\d+)/(\d+)\) \|$", out.stdout, re.M)
    assert [r[0] for r in rows] == ["London baseline", "vanilla, no pretraining", "vanilla, pretrain + finetune",
                                    "perceiver (m=64), pretrain + finetune", "rope, pretrain + finetune"], out.stdout
    dev_lines = (tmp_path / "data" / "birth_dev.tsv").read_text(encoding="utf-8").split("\n")
    dev = sum(1 for line in dev_lines if line.strip())
    assert all(int(total) == dev for *_, total in rows)
    assert (tmp_path / "out" / "demo" / "vanilla.pretrain.test.predictions").is_file()
    # a --pretrain_lr of the user's replaces the perceiver command's 6e-3 instead of following it
    pretrain_lines = re.findall(r"^\+ .*run\.py pretrain .*$", out.stdout, re.M)
    assert len(pretrain_lines) == 3 and all(l.count("--pretrain_lr") == 1 for l in pretrain_lines), pretrain_lines
