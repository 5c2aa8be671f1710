"""The handout-question tools under analysis/, on tiny sizes (loaded with importlib, run through main(argv))."""
import importlib.util
import os

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

import dataset
import decoding
import model
import run
from conftest import ROOT, small_config


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "analysis", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["attention_demo", "cost_curves", "what_pretraining_stores"])
def test_help_exits_0_and_shows_the_docstring(name, capsys):
    module = load(name)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    assert "handout question" in capsys.readouterr().out.lower()


def test_attention_demo_copies_averages_and_two_heads_spread_less(tmp_path):
    r = load("attention_demo").main(["--out", str(tmp_path), "--samples", "300"])
    ent, dist = r["entropy"], r["dist_j"]
    # copying: sharper weights and an output closer to v_j as the query grows
    assert (ent[1:] <= ent[:-1] + 1e-12).all() and ent[0] > 2.0 and ent[-1] < 1e-6
    assert (dist[1:] <= dist[:-1] + 1e-12).all() and dist[-1] < 1e-6
    assert r["err_avg"][0] > 0.3 and r["err_avg"][-1] < 1e-6  # averaging two values
    # one head swings between v_a and v_b; two heads stay near the average
    assert r["coef1"].std() > 0.3 and r["coef2"].std() < r["coef1"].std() / 2
    assert r["dist2"].median() < 0.1 < r["dist1"].median()
    for f in ("copying.png", "averaging.png", "heads.png", "attention_demo.md"):
        assert (tmp_path / f).stat().st_size > 0


def test_cost_formulas_match_torchs_flop_count_and_scale_as_derived():
    cc = load("cost_curves")
    torch.manual_seed(0)
    idx = torch.randint(1, 40, (3, 16))
    for variant, kw in (("vanilla", {}), ("perceiver", dict(perceiver=True))):
        gpt = model.GPT(small_config(**kw)).eval()  # L=4, d=32, m=8, V=40, l=16
        with FlopCounterMode(display=False) as fc:
            gpt(idx)
        assert fc.get_total_flops() == 2 * cc.macs(variant, 4, 16, 32, 8, 40, B=3)  # a multiply-add is 2 flops
    # d=256, L=4: doubling l from 512 multiplies the vanilla cost by 2 (1024 + 6*256) / (512 + 6*256) = 2.5
    assert cc.macs("vanilla", 4, 1024, 256) / cc.macs("vanilla", 4, 512, 256) == pytest.approx(2.5)
    # with m = l the Perceiver costs what the vanilla model does; with m fixed it tends to linear
    assert cc.macs("perceiver", 4, 128, 256, 128) == cc.macs("vanilla", 4, 128, 256)
    assert cc.macs("perceiver", 4, 2**20, 256, 64) / cc.macs("perceiver", 4, 2**19, 256, 64) == pytest.approx(2, 0.01)


def test_cost_curves_runs_at_two_small_lengths(tmp_path):
    rows = load("cost_curves").main(["--lengths", "16", "32", "--bottleneck_dim", "8", "--batch", "1",
                                     "--reps", "1", "--out", str(tmp_path)])
    for variant in ("vanilla", "perceiver"):
        assert [r[0] for r in rows[variant]] == [16, 32]
        assert all(r[1] > 0 and r[2] > 0 for r in rows[variant])
        assert rows[variant][1][2] > rows[variant][0][2]  # more activations for a longer sequence
    table = (tmp_path / "cost_curves.md").read_text(encoding="utf-8")
    assert "| 32 |" in table and "| vanilla |" in table and (tmp_path / "cost.png").stat().st_size > 0


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_what_pretraining_stores_groups_people_by_where_the_place_stands(tmp_path):
    ws = load("what_pretraining_stores")
    wiki = write(tmp_path / "wiki.txt", "\n".join([
        "Ann Lee. Ann Lee was born in Paris .",                                     # within 112
        "Bob Ray. Bob Ray " + "x" * 110 + " was born in Rome .",                    # only beyond 112
        "Cy Dee. Cy Dee is a painter from Parisian circles .",                      # not as a word: not in line
        "J.C. Ek. J.C. Ek was born in Oslo .",                                      # a dotted name, within 112
        "Where was everyone born? Dan Fox knows, but his own line is missing .",    # no line of Dan Fox's
    ]) + "\n")
    dev = write(tmp_path / "dev.tsv", "".join(f"Where was {n} born?\t{p}\n" for n, p in [
        ("Ann Lee", "Paris"), ("Bob Ray", "Rome"), ("Cy Dee", "Paris"), ("J.C. Ek", "Oslo"), ("Dan Fox", "Rome")]))
    train = write(tmp_path / "train.tsv", "Where was Ann Lee born?\tParis\nWhere was Bob Ray born?\tParis\n")
    with open(wiki, encoding="utf-8") as f:
        vocab = dataset.CharCorruptionDataset(f.read(), 128).vocab_size
    args = run.parse_args(["evaluate", "vanilla", wiki])
    torch.manual_seed(0)
    torch.save(run.build_model(args, vocab).state_dict(), tmp_path / "p.params")

    r = ws.main(["--wiki", wiki, "--eval", dev, "--train", train, "--params", str(tmp_path / "p.params"),
                 "--out", str(tmp_path / "out")])
    G = ws.GROUPS
    assert r["groups"] == [G[0], G[1], G[2], G[0], G[3]]
    assert {g: n for g, (n, _) in r["counts"].items()} == {G[0]: 2, G[1]: 1, G[2]: 1, G[3]: 1}
    assert all(0 < p <= 1 for p in r["probabilities"])
    for f in ("groups.png", "prior.png", "confidence.png", "what_pretraining_stores.md"):
        assert (tmp_path / "out" / f).stat().st_size > 0


@torch.no_grad()
def test_answer_probability_is_the_product_along_the_greedy_decode():
    ws = load("what_pretraining_stores")
    torch.manual_seed(0)
    gpt = model.GPT(small_config(block_size=128)).eval()
    mask_id, itos = 1, {i: chr(64 + i) for i in range(40)}
    stoi = {c: i for i, c in itos.items()}
    prompts = [[5, 6, 7, mask_id], [8, 9, 10, 11, 12, 13, mask_id]]  # two lengths: padding must change nothing
    preds = decoding.predict_places(gpt, prompts, itos, mask_id, steps=ws.STEPS)
    got = ws.answer_probabilities(gpt, prompts, preds, stoi, mask_id)
    for prompt, pred, p in zip(prompts, preds, got):
        x, expected = torch.tensor([prompt]), 1.0
        answer = [stoi[c] for c in pred] + ([mask_id] if len(pred) < ws.STEPS else [])
        for tok in answer:  # one step at a time, as a reader of the decode would multiply them
            probs = F.softmax(gpt(x)[0][0, -1], dim=-1)
            assert int(probs.argmax()) == tok
            expected *= float(probs[tok])
            x = torch.cat([x, torch.tensor([[tok]])], dim=1)
        assert p == pytest.approx(expected, rel=1e-4)
