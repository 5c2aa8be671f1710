"""
rope, the 2024-25 course's variant: its rotary embeddings as the 2024 starter defines them, a
model whose params files move both ways with the course's, its schedule, its decoding, and
every path of the project (sub-batches, bf16, --compile, resume, torchrun) with it.
"""
import argparse
import math
import os
import random
import re
import socket
import subprocess
import sys

import pytest
import torch

import attention
import decoding
import model
import run
import trainer
import utils
from conftest import ROOT, small_config
from test_robustness import cli

RUN = os.path.join(ROOT, "src", "run.py")


def course_rotary_emb(dim, max_positions):
    """The 2024 starter's cache as its handout defines it, written independently: [t, i-1] = (cos, sin)
    of t * theta_i, theta_i = 10000^(-2(i-1)/dim), i = 1..dim/2, in float64."""
    cache = torch.empty(max_positions, dim // 2, 2, dtype=torch.float64)
    for t in range(max_positions):
        for i in range(1, dim // 2 + 1):
            angle = t * 10000 ** (-2 * (i - 1) / dim)
            cache[t, i - 1] = torch.tensor([math.cos(angle), math.sin(angle)])
    return cache


def course_rotate(x, cache):
    """The 2024 handout's rotation, as complex numbers: pair (x_2i, x_2i+1) times cos + i sin."""
    xc = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(xc * torch.view_as_complex(cache[:x.size(-2)].contiguous())).flatten(-2)


def test_rotary_cache_and_rotation_are_the_courses():
    ours = attention.precompute_rotary_emb(32, 128)
    assert ours.shape == (128, 16, 2) and ours.dtype == torch.float32
    assert torch.allclose(ours.double(), course_rotary_emb(32, 128), atol=1e-5)
    torch.manual_seed(0)
    x = torch.randn(3, 8, 20, 32)  # (B, nh, T, hs): 20 positions, the cache truncated to them
    rotated = attention.apply_rotary_emb(x, ours)
    assert rotated.shape == x.shape
    assert torch.allclose(rotated.double(), course_rotate(x, course_rotary_emb(32, 128)), atol=1e-5)
    # a rotation keeps each pair's length, and turns nothing at position 0
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-4)
    assert torch.equal(rotated[:, :, 0], x[:, :, 0])
    # what RoPE is for: scores depend on the distance between positions, not on where they are
    q, k = torch.randn(32), torch.randn(32)
    qs = attention.apply_rotary_emb(q.expand(20, 32), ours)
    ks = attention.apply_rotary_emb(k.expand(20, 32), ours)
    assert torch.allclose(qs[7] @ ks[3], qs[17] @ ks[13], atol=1e-4)


def test_rotation_gradient_is_the_rotation_back():
    x = torch.randn(2, 3, 10, 8, dtype=torch.float64, requires_grad=True)
    cache = attention.precompute_rotary_emb(8, 10).double()
    assert torch.autograd.gradcheck(lambda x: attention.apply_rotary_emb(x, cache), (x,))


def course_2024_keys():
    """The 2024 course model's state_dict keys and shapes: the vanilla model's without pos_emb, with
    each block's rope_cache (block_size, head_size / 2, 2)."""
    d, keys = 256, {"tok_emb.weight": (256, 256), "ln_f.weight": (256,), "ln_f.bias": (256,),
                    "head.weight": (256, 256)}
    for i in range(4):
        p = f"blocks.{i}"
        keys.update({f"{p}.{ln}.{w}": (d,) for ln in ("ln1", "ln2") for w in ("weight", "bias")})
        keys.update({f"{p}.attn.{n}.{w}": ((d, d) if w == "weight" else (d,))
                     for n in ("key", "query", "value", "proj") for w in ("weight", "bias")})
        keys.update({f"{p}.attn.mask": (1, 1, 128, 128), f"{p}.attn.rope_cache": (128, 16, 2),
                     f"{p}.mlp.0.weight": (4 * d, d), f"{p}.mlp.0.bias": (4 * d,),
                     f"{p}.mlp.2.weight": (d, 4 * d), f"{p}.mlp.2.bias": (d,)})
    return keys


def handout_rope():
    return run.build_model(argparse.Namespace(variant="rope", bottleneck_dim=32, plain=False), 256)


def test_rope_model_is_the_2024_courses(tmp_path):
    gpt = handout_rope()
    assert sum(p.numel() for p in gpt.parameters()) == 3_290_624
    assert not hasattr(gpt, "pos_emb")
    assert {k: tuple(v.shape) for k, v in gpt.state_dict().items()} == course_2024_keys()
    # a params file of the course's: its caches (computed its way) load, strictly, and are ours
    course = {k: v.clone() for k, v in gpt.state_dict().items()}
    for k in course:
        if k.endswith("rope_cache"):
            course[k] = course_rotary_emb(32, 128).float()
    torch.save(course, tmp_path / "course.params")
    other = handout_rope()
    other.load_state_dict(torch.load(tmp_path / "course.params", weights_only=True))
    assert all(torch.allclose(other.state_dict()[k], gpt.state_dict()[k], atol=1e-5) for k in course)
    # and ours load into the course's model the same way: same keys, shapes, a plain state_dict of tensors
    torch.save(gpt.state_dict(), tmp_path / "ours.params")
    loaded = torch.load(tmp_path / "ours.params", weights_only=True)
    assert {k: tuple(v.shape) for k, v in loaded.items()} == course_2024_keys()
    with pytest.raises(AssertionError, match="even"):
        model.GPT(model.GPTConfig(40, 16, n_layer=1, n_head=4, n_embd=12, rope=True))


@pytest.mark.parametrize("train", [False, True])
def test_rope_is_causal(train):
    torch.manual_seed(0)
    gpt = model.GPT(small_config(rope=True, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)).train(train)
    x = torch.randint(0, 40, (2, 16))
    changed = x.clone()
    changed[:, 9:] = torch.randint(0, 40, (2, 7))
    a, b = gpt(x)[0], gpt(changed)[0]
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-5) and not torch.allclose(a[:, 9:], b[:, 9:])


def test_rope_decoding_batched_equals_one_prompt_at_a_time():
    """Left-padded rows in one batch, each with its RoPE positions counted from its own start: the
    predictions of the course's one prompt at a time, for prompts of many lengths."""
    torch.manual_seed(0)
    gpt = model.GPT(small_config(rope=True, block_size=48))
    with torch.no_grad():
        for p in gpt.parameters():
            p.mul_(8)  # an untrained model repeats one character; larger weights give varied completions
    gpt.eval()
    itos = {i: chr(ord("A") + i) for i in range(40)}
    rng = random.Random(0)
    prompts = [[rng.randrange(2, 40) for _ in range(rng.randrange(1, 15))] + [1] for _ in range(40)]
    one_at_a_time = []
    for p in prompts:
        out = utils.sample(gpt, torch.tensor([p]), 24)[0]
        one_at_a_time.append("".join(itos[int(i)] for i in out).split(itos[1])[1])
    assert len(set(one_at_a_time)) > 10
    for bucket in (1, 4, 48):  # exact lengths, buckets of 4, one padded batch
        assert decoding.predict_places(gpt, prompts, itos, 1, steps=24, bucket=bucket) == one_at_a_time


def rows(n=16, t=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, 40, (n, t), generator=g)
    y = torch.randint(2, 40, (n, t), generator=g)
    for i in range(n):  # rows of different lengths, as pretraining's padded rows
        y[i, rng_len(i, t):] = 0
    return x, y


def rng_len(i, t):
    return 4 + (i * 7) % (t - 4)


def step_loss_and_grad(cfg, state, x, y, **settings):
    gpt = model.GPT(cfg)
    gpt.load_state_dict(state)
    t = trainer.Trainer(gpt, None, None, trainer.TrainerConfig(learning_rate=0.0, grad_norm_clip=float("inf"),
                                                               **settings))
    loss = float(t.train_step(x, y)[0])
    return loss, torch.cat([p.grad.flatten() for p in gpt.parameters()])


def test_rope_fast_paths_compute_the_course_step():
    """Sub-batches trimmed of padding (each row's positions still start at 0) and the fused AdamW
    against the course's computation, float32, dropout off; bf16 close to it."""
    torch.manual_seed(0)
    kw = dict(rope=True, block_size=48, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    course_cfg, fast_cfg = small_config(plain=True, **kw), small_config(**kw)
    state = model.GPT(course_cfg).state_dict()
    x, y = rows()
    l1, g1 = step_loss_and_grad(course_cfg, state, x, y, fused_adamw=False)
    l2, g2 = step_loss_and_grad(fast_cfg, state, x, y, sub_batches=4)
    assert l2 == pytest.approx(l1, rel=1e-5) and (g1 - g2).norm() <= 1e-5 * g1.norm()
    l3, g3 = step_loss_and_grad(fast_cfg, state, x, y, sub_batches=4, dtype="bfloat16")
    assert l3 == pytest.approx(l1, rel=2e-2) and torch.nn.functional.cosine_similarity(g1, g3, dim=0) > 0.99


def test_rope_compiled_step_computes_the_eager_step():
    torch.manual_seed(0)
    cfg = small_config(rope=True, block_size=48, embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    state = model.GPT(cfg).state_dict()
    x, y = rows()
    l1, g1 = step_loss_and_grad(cfg, state, x, y)
    l2, g2 = step_loss_and_grad(cfg, state, x, y, compile=True)
    assert l2 == pytest.approx(l1, rel=1e-4) and (g1 - g2).norm() <= 1e-4 * g1.norm()


def test_rope_schedule_is_the_2024_handouts():
    """rope pretrains with final_tokens of 650 epochs (the cosine's floor at its last epoch); its
    finetuning, and vanilla's and the Perceiver's pretraining, keep the 2023 handout's 200."""
    def final_epochs(variant, function, *flags):
        args = run.parse_args([function, variant, "wiki.txt", "--writing_params_path", "x.params", *flags])
        args.corpus_sha256 = None
        phase = "pretrain" if function == "pretrain" else "finetune from pretrained"
        tconf = run.trainer_config(args, phase, 100, 2938, "cpu", (0, 1))
        return tconf.final_tokens / (2938 * 128), tconf.schedule
    assert final_epochs("rope", "pretrain") == (650, "lr floor after 650 pretraining-corpus epochs (the 2024 "
                                                     "handout's)")
    assert final_epochs("rope", "finetune")[0] == 200
    assert final_epochs("vanilla", "pretrain") == (200, "lr floor after 200 pretraining-corpus epochs (the "
                                                        "handout's)")
    assert final_epochs("perceiver", "pretrain")[0] == 200
    assert final_epochs("rope", "pretrain", "--final_epochs", "60")[0] == 60
    assert final_epochs("vanilla", "pretrain", "--final_epochs", "650")[0] == 650



def test_rope_runs_every_handout_command_and_refuses_other_params(corpus):
    common = ["--device", "cpu", "--batch_size", "32"]
    out = cli(["pretrain", "rope", "wiki.txt", "--writing_params_path", "rope.pretrain.params", "--max_epochs", "2",
               *common], corpus)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^pretrain rope on cpu .* 2 epochs = 4 steps; lr floor after 650 pretraining-corpus epochs "
                     r"\(the 2024 handout's\)$", out.stdout, re.M), out.stdout
    out = cli(["finetune", "rope", "wiki.txt", "--reading_params_path", "rope.pretrain.params",
               "--writing_params_path", "rope.finetune.params", "--finetune_corpus_path", "train.tsv", *common], corpus)
    assert out.returncode == 0, out.stderr
    for eval_path, outputs in (("train.tsv", "rope.pretrain.dev.predictions"),):
        out = cli(["evaluate", "rope", "wiki.txt", "--reading_params_path", "rope.finetune.params",
                   "--eval_corpus_path", eval_path, "--outputs_path", outputs, "--device", "cpu"], corpus)
        assert out.returncode == 0 and "Correct: " in out.stdout, out.stderr
        assert len((corpus / outputs).read_text(encoding="utf-8").splitlines()) == 2
    # params of another variant: one line each way
    cli(["pretrain", "vanilla", "wiki.txt", "--writing_params_path", "vanilla.params", "--max_epochs", "1",
         *common], corpus)
    for variant, params, found in (("vanilla", "rope.finetune.params", "rope"), ("rope", "vanilla.params", "vanilla")):
        out = cli(["evaluate", variant, "wiki.txt", "--reading_params_path", params, "--eval_corpus_path", "train.tsv",
                   "--outputs_path", "x.predictions", "--device", "cpu"], corpus)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1, out.stderr
        assert f"{params}: holds {found} params, but this run builds a {variant} model" in lines[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rope_resumes_exactly_and_trains_under_torchrun(corpus):
    """An interrupted rope pretraining resumes to the uninterrupted run's bytes (in process: the
    trainer's stop flag set after some steps); two torchrun processes train it too."""
    args = ["pretrain", "rope", "wiki.txt", "--max_epochs", "3", "--batch_size", "16", "--device", "cpu"]
    assert cli(args + ["--writing_params_path", "full.params"], corpus).returncode == 0
    real_step = trainer.Trainer.train_step

    def stop_after_five(self, x, y):
        out = real_step(self, x, y)
        if self.step == 5:
            self.stop_signal = 2  # SIGINT, as the handler sets it
        return out
    trainer.Trainer.train_step = stop_after_five
    try:
        assert cli(args + ["--writing_params_path", "cut.params"], corpus).returncode == 130
    finally:
        trainer.Trainer.train_step = real_step
    assert torch.load(corpus / "cut.params.ckpt", weights_only=True)["step"] == 5
    done = cli(args + ["--writing_params_path", "cut.params", "--resume"], corpus)
    assert done.returncode == 0 and "resuming from cut.params.ckpt" in done.stdout, done.stderr
    full, cut = (torch.load(corpus / p, weights_only=True) for p in ("full.params", "cut.params"))
    assert all(torch.equal(full[k], cut[k]) for k in full)

    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", RUN, *args, "--max_epochs", "1", "--writing_params_path",
                          "ddp.params"], cwd=corpus, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0 and out.stdout.count("trained 1 epochs, 4 steps") == 1, out.stderr[-3000:]
    assert "rope" in out.stdout and (corpus / "ddp.params").is_file()
