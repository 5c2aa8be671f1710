"""The analysis scripts under bench/ run on the bundled corpus."""
import os
import re
import subprocess
import sys

import torch

import dataset
import model
from conftest import ROOT

DATA = os.path.join(ROOT, "data")
PROBE = os.path.join(ROOT, "bench", "probe_memory.py")


def test_probe_memory_counts_the_biographies_it_can_probe(tmp_path):
    with open(os.path.join(DATA, "wiki.txt"), encoding="utf-8") as f:
        wiki = f.read()
    ds = dataset.CharCorruptionDataset(wiki, 128)
    torch.manual_seed(0)
    gpt = model.GPT(model.GPTConfig(ds.vocab_size, 128, n_layer=4, n_head=8, n_embd=256))
    torch.save(gpt.state_dict(), tmp_path / "p.params")
    train = os.path.join(DATA, "birth_places_train.tsv")
    out = subprocess.run([sys.executable, PROBE, os.path.join(DATA, "wiki.txt"), str(tmp_path / "p.params"), train],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    m = re.fullmatch(r"recalled (\d+) of (\d+) birthplaces \(\S+%\); always '.+' would get (\d+) \(\S+%\)\n",
                     out.stdout)
    assert m, out.stdout
    recalled, probed, prior = map(int, m.groups())
    # every train person has a biography naming the place early; an untrained model recalls none of them
    with open(train, encoding="utf-8") as f:
        people = sum(1 for line in f if line.strip())
    assert probed >= people and recalled == 0 and prior > 0

    (tmp_path / "nobody.tsv").write_text("Where was Nobody Atall born?\tNowhere\n", encoding="utf-8")
    out = subprocess.run([sys.executable, PROBE, os.path.join(DATA, "wiki.txt"), str(tmp_path / "p.params"),
                          str(tmp_path / "nobody.tsv")], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "no biography" in out.stderr
