import math
import os
import random

import pytest
import torch

import dataset
import hardware
import model
import trainer
from conftest import ROOT, needs_cuda, small_config
from sub_batches import split_by_length, target_lengths
from trainer import TrainerConfig, lr_multiplier


def handout_config():
    # the handout's pretraining schedule: 2,938 documents x 128 positions
    return TrainerConfig(warmup_tokens=512 * 20, final_tokens=200 * 2938 * 128)


def test_lr_schedule_values():
    c = handout_config()
    W, F = c.warmup_tokens, c.final_tokens
    assert lr_multiplier(0, c) == 0.0
    assert lr_multiplier(W / 2, c) == pytest.approx(0.5)
    assert lr_multiplier(W, c) == pytest.approx(1.0)
    # a quarter of the way from warmup to final: cos(pi/4)
    assert lr_multiplier(W + (F - W) / 4, c) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_multiplier(W + (F - W) / 2, c) == pytest.approx(0.5)
    assert lr_multiplier(F, c) == pytest.approx(0.1)  # the floor (the cosine is 0 there)


def test_lr_schedule_is_not_clamped_after_final_tokens():
    c = handout_config()
    W, F = c.warmup_tokens, c.final_tokens
    at = lambda progress: lr_multiplier(W + progress * (F - W), c)
    assert at(1.2) == pytest.approx(0.1)  # still on the floor
    assert at(1.5) == pytest.approx(0.5)  # rising again
    assert at(2.0) == pytest.approx(1.0)  # back at the full lr
    assert at(3.0) == pytest.approx(0.1)
    # 650 epochs of 2,938 rows x 128 positions: progress about 3.25, rising at the end
    end = 650 * 2938 * 128
    assert (end - W) / (F - W) == pytest.approx(3.25, abs=0.01)
    assert lr_multiplier(end, c) > lr_multiplier(end - 2938 * 128, c) > 0.1


@pytest.mark.parametrize("perceiver", [False, True])
def test_optimizer_groups_follow_the_course_name_rule(perceiver):
    """
    The course decays every parameter whose name contains neither "bias" nor
    "LayerNorm.weight"; its LayerNorms are named ln1/ln2/ln_f, so only biases
    escape. Our names are the course's (params files are interchangeable).
    """
    gpt = model.GPT(small_config(perceiver))
    opt = trainer.configure_optimizer(gpt, TrainerConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in gpt.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    course_rule = sorted(n for n in names.values() if not any(nd in n for nd in ["bias", "LayerNorm.weight"]))
    assert decayed == course_rule
    assert decayed == sorted(n for n in names.values() if not n.endswith(".bias"))
    # what the rule decays that a "matrices only" rule would not: gains, embeddings, C
    for name in ["tok_emb.weight", "pos_emb", "ln_f.weight", "blocks.0.ln1.weight", "blocks.0.ln2.weight"]:
        assert name in decayed
    assert ("down_block.C" in decayed) == perceiver and ("up_block.ln1.weight" in decayed) == perceiver
    assert len(decayed) + len(no_decay["params"]) == len(list(gpt.parameters()))


def test_batches_in_file_order_by_default():
    """The course's DataLoader has no shuffle=True: every epoch, rows 0, 1, 2, ... in order."""
    rows = torch.arange(10)
    ds = torch.utils.data.TensorDataset(rows, rows)
    gpt = model.GPT(small_config())
    t = trainer.Trainer(gpt, ds, None, TrainerConfig(batch_size=4))
    for epoch in range(2):
        t.epoch = epoch
        assert [x.tolist() for x, _ in t.epoch_batches()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    t.batches_done = 1  # resuming mid-epoch skips what was trained
    assert [x.tolist() for x, _ in t.epoch_batches()] == [[4, 5, 6, 7], [8, 9]]
    shuffled = trainer.Trainer(gpt, ds, None, TrainerConfig(batch_size=4, shuffle=True))
    order = [x.tolist() for x, _ in shuffled.epoch_batches()]
    assert sorted(sum(order, [])) == list(range(10)) and sum(order, []) != list(range(10))


def finetune_like_rows(n=24, T=48):
    """Rows like NameDataset's: PAD targets first, then a few real ones, then PADs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 40, (n, T), generator=g)
    y = torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        start = int(torch.randint(1, 30, (1,), generator=g))
        length = int(torch.randint(2, 12, (1,), generator=g))
        y[i, start:start + length] = torch.randint(1, 40, (length,), generator=g)
    y[3] = 0  # a row without any real target
    return x, y


def test_split_keeps_every_real_target():
    x, y = finetune_like_rows()
    parts = split_by_length(x, y, 4)
    assert sum(n for _, _, n in parts) == int((y != 0).sum())
    assert sorted(t for _, yk, _ in parts for t in yk[yk != 0].tolist()) == sorted(y[y != 0].tolist())
    assert all(xk.shape == yk.shape for xk, yk, _ in parts)
    # each part is cut at the first multiple of 16 past its rows' last real target
    for _, yk, _ in parts:
        last = int(target_lengths(yk).max())
        assert yk.size(1) == min(48, -(-last // 16) * 16)
    assert min(yk.size(1) for _, yk, _ in parts) < 48  # some parts are trimmed


def gradient_only(config):
    """A step that leaves the params and the gradient as they are: lr 0, no clipping."""
    config.learning_rate, config.grad_norm_clip = 0.0, float("inf")
    return config


def assert_same_loss_and_gradient(reference, other, x, y):
    """
    reference and other are (GPTConfig, sub_batches); both models start from the
    same weights, and Trainer.train_step must give the same loss and gradient.
    """
    results = []
    for cfg, sub_batches in (reference, other):
        gpt = model.GPT(cfg)
        if results:
            gpt.load_state_dict(results[0][2])
        t = trainer.Trainer(gpt, None, None, gradient_only(TrainerConfig(sub_batches=sub_batches)))
        loss = float(t.train_step(x, y)[0])
        results.append((loss, torch.cat([p.grad.flatten() for p in gpt.parameters()]), gpt.state_dict()))
    (l1, g1, _), (l2, g2, _) = results
    # float32 rounding only (measured, AVX-512 and AVX2 alike: loss 2.2e-7, gradient 2.2e-7 at most)
    assert l2 == pytest.approx(l1, rel=2e-6)
    assert (g1 - g2).norm() <= 2e-6 * g1.norm()


@pytest.mark.parametrize("perceiver", [False, True])
@pytest.mark.parametrize("sub_batches", [2, 5])
def test_sub_batches_give_the_full_batch_loss_and_gradient(perceiver, sub_batches):
    torch.manual_seed(0)
    x, y = finetune_like_rows()
    cfg = small_config(perceiver, block_size=48, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    assert_same_loss_and_gradient((cfg, 1), (cfg, sub_batches), x, y)


@pytest.mark.parametrize("perceiver", [False, True])
@pytest.mark.parametrize("rows", ["pretrain", "finetune"])
def test_fast_path_equals_the_course_path_on_real_rows(perceiver, rows):
    """
    run.py's CPU default (8 length-sorted trimmed sub-batches; attention explicit there too)
    against the course's computation (full rows), fp32, dropout off:
    the same loss and gradients on rows of both datasets. Finetuning rows start
    with PAD targets, so trimming them by the count of real targets would cut
    the answer off; this catches it.
    """
    random.seed(0)  # the corruption of pretraining rows
    with open(os.path.join(ROOT, "data", "wiki.txt"), encoding="utf-8") as f:
        pre = dataset.CharCorruptionDataset(f.read(), 128)
    ds = pre
    if rows == "finetune":
        with open(os.path.join(ROOT, "data", "birth_places_train.tsv"), encoding="utf-8") as f:
            ds = dataset.NameDataset(pre, f.read())
    torch.manual_seed(0)
    x, y = map(torch.stack, zip(*[ds[i] for i in range(48)]))
    assert len(split_by_length(x, y, 8)) == 8
    kw = dict(n_layer=4, n_head=8, n_embd=256, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    if perceiver:
        kw.update(perceiver=True, bottleneck_dim=64)
    course = model.GPTConfig(pre.vocab_size, 128, plain=True, **kw)
    fast = model.GPTConfig(pre.vocab_size, 128, plain=False, **kw)
    assert_same_loss_and_gradient((course, 1), (fast, 8), x, y)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("perceiver", [False, True])
def test_fast_path_trains_to_the_course_paths_params(perceiver, device):
    """
    Two optimizer steps on pretraining rows through Trainer.train, run.py's default in
    float32 on this device (CPU: trimmed sub-batches, fused AdamW; GPU: SDPA's kernels, as
    no dropout applies, whole batches, fused AdamW) against the course's computation (--plain:
    explicit attention, torch's default AdamW), dropout off: AdamW with the course's decay
    groups moves both to the same params. The rows come from the DataLoader on both sides
    (the GPU's own corruption draws other rows: tests/test_corruption.py).
    """
    with open(os.path.join(ROOT, "data", "wiki.txt"), encoding="utf-8") as f:
        pre = dataset.CharCorruptionDataset(f.read(), 32)
    ds = torch.utils.data.Subset(pre, range(32))
    kw = dict(embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    trained = []
    for plain in (True, False):
        torch.manual_seed(0)
        cfg = small_config(perceiver, block_size=32, plain=plain, **kw)
        cfg.vocab_size = pre.vocab_size
        gpt = model.GPT(cfg)
        start = torch.cat([p.detach().flatten() for p in gpt.parameters()])
        random.seed(0)  # the same corruptions for both
        settings = hardware.speed_settings(device, "float32", 16, plain=plain)
        settings["device_batches"] = False
        if device == "cpu" and not plain:
            settings["sub_batches"] = 4
        tconf = TrainerConfig(max_epochs=1, batch_size=16, learning_rate=6e-3, lr_decay=True, warmup_tokens=100,
                              final_tokens=10_000, device=device, **settings)
        trainer.Trainer(gpt, ds, None, tconf).train()
        trained.append(torch.cat([p.detach().flatten() for p in gpt.parameters()]).cpu())
    assert (trained[0] - start).norm() > 0.1  # the steps moved the params
    assert (trained[0] - trained[1]).norm() <= 1e-4 * (trained[0] - start).norm()


@pytest.mark.parametrize("perceiver", [False, True])
def test_bf16_default_step_is_close_to_the_course_paths(perceiver):
    """
    Where the hardware has bf16, run.py's default step is the fast path under bf16
    autocast: not exact, but at initial-scale attention logits its loss and
    gradient must match the course's float32 computation closely.
    """
    random.seed(0)
    with open(os.path.join(ROOT, "data", "wiki.txt"), encoding="utf-8") as f:
        pre = dataset.CharCorruptionDataset(f.read(), 128)
    x, y = map(torch.stack, zip(*[pre[i] for i in range(32)]))
    kw = dict(embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    results = []
    for fast, dtype in ((False, "float32"), (True, "bfloat16")):
        torch.manual_seed(0)
        cfg = small_config(perceiver, block_size=128, plain=not fast, **kw)
        cfg.vocab_size = pre.vocab_size
        gpt = model.GPT(cfg)
        t = trainer.Trainer(gpt, None, None, gradient_only(
            TrainerConfig(dtype=dtype, sub_batches=hardware.sub_batches_for(32, dtype))))
        loss = float(t.train_step(x, y)[0])
        results.append((loss, torch.cat([p.grad.flatten() for p in gpt.parameters()])))
    (l1, g1), (l2, g2) = results
    # measured, AVX-512 with BF16 and emulated under ATEN_CPU_CAPABILITY=avx2 alike: loss 1.4e-6 relative,
    # cosine 0.9999966 (the gradient 0.3% off: bf16's rounding of the inputs, 2^-9 each)
    assert l2 == pytest.approx(l1, rel=1e-5)
    assert torch.nn.functional.cosine_similarity(g1, g2, dim=0) > 0.99998


def test_a_gpu_takes_the_whole_batch():
    """Cutting sub-batches needs the row lengths on the host; a GPU's step is bound by launches, not arithmetic."""
    assert [hardware.sub_batches_for(128, "bfloat16", d) for d in ("cpu", "cuda", "cuda:1")] == [4, 1, 1]
    assert hardware.sub_batches_for(128, "float32") == 8


def test_device_batches_corrupt_whole_batches_in_file_order():
    """The GPU default makes each pretraining batch with DeviceBatches (torch's generator), rows in file order."""
    docs = [f"document {i} " + "abcdefghij" * 3 for i in range(10)]
    ds = dataset.CharCorruptionDataset("\n".join(docs), 64)
    t = trainer.Trainer(model.GPT(small_config()), ds, None, TrainerConfig(batch_size=4, device_batches=True))
    state = random.getstate()
    batches = list(t.epoch_batches())
    assert random.getstate() == state  # __getitem__ would have drawn from Python's generator
    # the DataLoader's batches have the same shapes, so the lr schedule counts the same tokens
    loader = trainer.Trainer(t.raw_model, ds, None, TrainerConfig(batch_size=4))
    assert [(x.shape, y.shape) for x, y in batches] == [(x.shape, y.shape) for x, y in loader.epoch_batches()]
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    for row, (x, y) in enumerate(zip(*map(torch.cat, zip(*batches)))):
        text = "".join(ds.itos[int(c)] for c in x) + ds.itos[int(y[-1])]
        prefix, suffix, content = text.rstrip(ds.PAD_CHAR).split(ds.MASK_CHAR)
        assert docs[row].startswith(prefix + content + suffix)
        assert torch.equal(x[1:], y[:-1])


def test_compiled_step_computes_the_eager_step():
    """
    --compile (torch.compile, whole static batches; CUDA graphs on a GPU) is opt-in and must
    compute what the eager step computes: the same losses over steps, the course's state_dict
    names. Inductor's real code generation, on CPU at a tiny size (about half a minute).
    """
    docs = "\n".join(f"person {i} was born in town {i % 7} and wrote {i} books" for i in range(24))

    def steps(compile):
        torch.manual_seed(0)
        random.seed(0)
        ds = dataset.CharCorruptionDataset(docs, 16)
        cfg = small_config(embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0, n_layer=1, n_embd=16, n_head=2)
        cfg.vocab_size = ds.vocab_size
        t = trainer.Trainer(model.GPT(cfg), ds, None,
                            TrainerConfig(max_epochs=3, batch_size=24, learning_rate=1e-2, compile=compile))
        losses = []
        for epoch in range(3):  # one shape: compiled once
            t.epoch, t.batches_done = epoch, 0
            losses += [float(t.train_step(x, y)[0]) for x, y in t.epoch_batches()]
        t.raw_model.eval()
        return losses, t.raw_model.state_dict(), t.raw_model(torch.tensor([ds.stoi[c] for c in docs[:16]])[None])[0]

    (eager, eager_params, eager_logits), (compiled, compiled_params, compiled_logits) = steps(False), steps(True)
    assert compiled == pytest.approx(eager, rel=1e-5) and eager[-1] < eager[0]
    assert list(compiled_params) == list(eager_params)
    # logits, not params: the key biases have no gradient but rounding's, which Adam scales up to the lr
    assert torch.allclose(compiled_logits, eager_logits, atol=1e-4)
