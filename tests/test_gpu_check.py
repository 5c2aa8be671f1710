"""
bench/gpu_check.sh, the one command for a lent GPU: every stage at a tiny size on CPU here;
and the CUDA-only tests that it runs there (`pytest -k cuda`), skipped without a GPU.
"""
import argparse
import contextlib
import math
import os
import re
import subprocess
import sys
import tarfile
import warnings

import pytest
import torch

import attention
import dataset
import hardware
import run
import trainer
from conftest import ROOT
from decoding import predict_places
from inputs import encode, read_questions

DATA = os.path.join(ROOT, "data")
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: bench/gpu_check.sh runs it where there is a GPU")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def handout_trainer(variant, ds, batch_size, **kw):
    """run.py's pretraining on a GPU's default path: whole batches made there, the loss read back every 25 steps."""
    torch.manual_seed(0)
    gpt = run.build_model(argparse.Namespace(variant=variant, bottleneck_dim=64, plain=False), ds.vocab_size)
    settings = hardware.speed_settings("cuda", hardware.pick_dtype("auto", "cuda"), batch_size)
    assert settings["sub_batches"] == 1 and settings["device_batches"] and settings["log_every"] == 25
    tconf = trainer.TrainerConfig(batch_size=batch_size, learning_rate=6e-3, lr_decay=True, warmup_tokens=512 * 20,
                                  final_tokens=200 * len(ds) * 128, device="cuda", **settings, **kw)
    return trainer.Trainer(gpt, ds, None, tconf)


@needs_cuda
@pytest.mark.parametrize("variant", ["vanilla", "perceiver"])
def test_cuda_training_steps_without_host_synchronisation(variant):
    """The steps of an epoch (batch made on the GPU, forward, backward, clip, fused AdamW, lr) never wait for the GPU."""
    ds = dataset.CharCorruptionDataset(read(os.path.join(DATA, "wiki.txt")), 128)
    t = handout_trainer(variant, ds, batch_size=16)
    t.model.train()
    batches = t.epoch_batches()
    # before the check: the epoch's row order goes to the GPU (a copy the host waits for), and the
    # first step sets up cuBLAS, the optimizer's state and the documents' tensor
    x, y = next(batches)
    losses = [t.train_step(x, y)[0]]
    chars = (y != 0).sum()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches:
            losses.append(t.train_step(x, y)[0])
            chars = chars + (y != 0).sum()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(losses) == math.ceil(len(ds) / 16) >= 5
    assert all(math.isfinite(v) for v in torch.stack(losses).tolist()) and int(chars) > 0


@needs_cuda
def test_cuda_training_loop_waits_for_the_gpu_only_to_log():
    """
    Trainer.train on a GPU's default path: the host waits for the device when it logs (every
    25 steps and at an epoch's end) and when an epoch's row order goes there, not every step.
    """
    ds = dataset.CharCorruptionDataset(read(os.path.join(DATA, "wiki.txt")), 128)
    t = handout_trainer("vanilla", ds, batch_size=4, max_epochs=3)
    steps = 3 * math.ceil(len(ds) / 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            torch.zeros(1, device="cuda").item()  # one that the count must see
            t.train()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    assert t.step == steps
    # expected about 20: 2 a log (the losses, the character count), 2 logs and 1 row order an epoch, set-up
    assert 1 <= syncs < steps / 2, f"{syncs} host synchronisations in {steps} steps"


@needs_cuda
@pytest.mark.parametrize("tq,tk", [(128, 128), (64, 128), (128, 64)])
def test_cuda_bf16_attention_keeps_the_course_mask_corner(tq, tk):
    """
    With --dtype bfloat16 training runs attention in bf16 (autocast), where SDPA may pick flash or memory-efficient
    kernels, forward and backward: for the Perceiver's non-square attention (m = 64 queries
    on 128 keys down, 128 on 64 up) they must keep the course's mask[:Tq, :Tk] (query i sees
    keys 0..i; flash attention's own causal mask is bottom-right aligned). Against the course's
    explicit computation in float32 on the same bf16-rounded inputs, within bf16's rounding.
    """
    torch.manual_seed(0)
    conf = argparse.Namespace(n_embd=256, n_head=8, block_size=128, attn_pdrop=0.1, resid_pdrop=0.1)
    course_attn, fast_attn = (attention.CausalSelfAttention(argparse.Namespace(**vars(conf), plain=plain))
                              .cuda().eval() for plain in (True, False))
    q, k, v = (torch.randn(4, 8, t, 32, device="cuda").bfloat16().float().requires_grad_() for t in (tq, tk, tk))
    course = course_attn.attend(q, k, v)
    grad = torch.randn_like(course)
    course_grads = torch.autograd.grad(course, (q, k, v), grad)
    fast_inputs = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    fast = fast_attn.attend(*fast_inputs)
    fast_grads = torch.autograd.grad(fast, fast_inputs, grad.bfloat16())
    for mine, theirs in zip((fast, *fast_grads), (course, *course_grads)):
        assert mine.dtype == torch.bfloat16
        assert (mine.float() - theirs).abs().max() <= 0.05 * theirs.abs().max() + 0.01


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_dropout_has_the_expectation_of_no_dropout(device, dtype):
    """
    Attention dropout where training does it (SDPA's kernels on a GPU, fast_dropout on CPU):
    dropped weights scaled by 1/(1-p) leave the output's and the gradients' expectation that
    of no dropout, as nn.Dropout's do. A kernel that drops without rescaling, or with another
    p, is off by 10% or more; 256 draws average to about 1.5%.
    """
    torch.manual_seed(0)
    conf = argparse.Namespace(n_embd=64, n_head=2, block_size=64, attn_pdrop=0.1, resid_pdrop=0.1, plain=False)
    attn = attention.CausalSelfAttention(conf).to(device)
    q, k, v = (torch.randn(2, 2, 64, 32, device=device).to(dtype).requires_grad_() for _ in range(3))
    g = torch.randn(2, 2, 64, 32, device=device).to(dtype)

    def output_and_grads():
        out = attn.attend(q, k, v)
        return [t.float() for t in (out, *torch.autograd.grad(out, (q, k, v), g))]

    attn.eval()
    exact = output_and_grads()
    attn.train()
    draws = 256
    mean = [torch.zeros_like(t) for t in exact]
    for _ in range(draws):
        for m, t in zip(mean, output_and_grads()):
            m += t / draws
    for name, m, e in zip(("output", "dq", "dk", "dv"), mean, exact):
        assert (m - e).norm() < 0.05 * e.norm(), name


def dropped_attention_weights(attend, q, k, seed):
    """
    The weights (B, nh, Tq, Tk), after dropout, with which attend(q, k, v) combines v under the
    dropout mask that `seed` gives: read back with v = blocks of the identity, one call each, the
    generator reseeded before each (dropout inside SDPA's kernels draws from it, as nn.Dropout does).
    Each v is laid out as k and needs a gradient as q does: SDPA picks its kernel by them.
    """
    B, nh, _, hs = q.shape
    Tk = k.size(-2)
    eye = torch.eye(Tk, device=q.device, dtype=q.dtype)
    blocks = []
    for j in range(0, Tk, hs):
        v = torch.empty_like(k).copy_(eye[:, j:j + hs].expand(B, nh, Tk, hs)).requires_grad_(q.requires_grad)
        torch.manual_seed(seed)
        blocks.append(attend(q, k, v).detach())
    return torch.cat(blocks, dim=-1)[..., :Tk]


SDPA_BACKENDS = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]


@pytest.mark.parametrize("device,backend", [("cpu", None), ("cpu", "MATH")] + [
    pytest.param("cuda", b, marks=needs_cuda) for b in [None] + SDPA_BACKENDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_dropout_backward_uses_the_forwards_mask(device, backend, dtype):
    """
    Attention with dropout where training does it (backend None: what attend picks; else one
    of SDPA's kernels forced), at the handout's shapes (128 positions, head size 32): output and
    gradients must be those of ONE dropout mask, the forward's. The mask is read back from the
    forward (dropped_attention_weights); output and gradients are then recomputed from it in
    float64. A kernel whose backward redraws the mask (a seed/offset mix-up) keeps the
    expectation of no dropout (the test above) but trains on noise wherever attention matters:
    its gradients are off by tens of percent here.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    conf = argparse.Namespace(n_embd=256, n_head=8, block_size=128, attn_pdrop=0.1, resid_pdrop=0.1, plain=False)
    attn = attention.CausalSelfAttention(conf).to(device).train()

    def sdpa(q, k, v):  # the call attend makes on a GPU, under sdpa_kernel: with the one kernel allowed
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.1, is_causal=True)
    attend = attn.attend if backend is None else sdpa
    # laid out as attend's inputs in training: (B, T, nh, hs) projections seen as (B, nh, T, hs)
    q, k, v, g = (torch.randn(2, 128, 8, 32, device=device).to(dtype).transpose(1, 2) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext():
        try:
            weights = dropped_attention_weights(attend, q, k, seed=1).double()
            torch.manual_seed(1)
            out = attend(q, k, v)
            grads = torch.autograd.grad(out, (q, k, v), g)
        except RuntimeError as e:  # this kernel does not take these inputs (dtype, dropout) on this device
            pytest.skip(f"{backend} with dropout in {dtype} on {device}: {str(e).splitlines()[0][:120]}")

    causal = torch.ones(128, 128, dtype=torch.bool, device=device).tril()
    kept = weights != 0
    dropped = 1 - kept[..., causal].double().mean().item()
    assert 0.08 < dropped < 0.12, f"dropout is not on: {dropped:.3f} of the weights dropped"
    assert not kept[..., ~causal].any(), "a query saw a later key"
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    att = (qd @ kd.transpose(-2, -1) / math.sqrt(32)).masked_fill(~causal, float("-inf"))
    exact_weights = torch.softmax(att, dim=-1) * kept / 0.9
    exact = exact_weights @ vd
    exact_grads = torch.autograd.grad(exact, (qd, kd, vd), g.double())
    tol = 1e-4 if dtype == torch.float32 else 0.02  # relative to the largest entry; bf16 keeps 8 bits
    for name, mine, theirs in zip(("weights", "output", "dq", "dk", "dv"), (weights, out, *grads),
                                  (exact_weights, exact, *exact_grads)):
        err = (mine.double() - theirs).abs().max().item()
        assert err <= tol * theirs.abs().max().item(), f"{name}: off by {err:.3g}"


@needs_cuda
@pytest.mark.parametrize("variant", ["vanilla", "perceiver"])
def test_cuda_decoding_layouts_agree_with_the_cpu(variant):
    """
    A GPU decodes every prompt in one padded batch (the vanilla model left-padded, with its
    key/value cache): the predictions of decoding by exact length, on the GPU and on the CPU,
    for the dev prompts (A5_DATA_DIR's, else the bundled ones). In float64, so that no near-tie
    of an untrained model's logits is settled by rounding (top-two gaps down to 2e-6 were seen
    on the course's dev prompts).
    """
    data = os.environ.get("A5_DATA_DIR") or DATA
    pre = dataset.CharCorruptionDataset(read(os.path.join(data, "wiki.txt")), 128)
    mask_id = pre.stoi[pre.MASK_CHAR]
    prompts = [encode(pre.stoi, q) + [mask_id] for _, q, _ in read_questions(os.path.join(data, "birth_dev.tsv"))]
    torch.manual_seed(0)
    args = argparse.Namespace(variant=variant, bottleneck_dim=64, plain=False)
    gpt = run.build_model(args, pre.vocab_size).double().eval()
    every = 20 if variant == "perceiver" else 5  # the CPU's Perceiver recomputes every position
    on_cpu = predict_places(gpt, prompts[::every], pre.itos, mask_id, bucket=1)
    gpt.cuda()
    one_batch = predict_places(gpt, prompts, pre.itos, mask_id)  # a GPU's default
    exact = predict_places(gpt, prompts, pre.itos, mask_id, bucket=1)
    assert len(set(exact)) > 1 and len({len(p) for p in prompts}) > 8
    assert one_batch == exact
    assert one_batch[::every] == on_cpu


def tiny_inputs(tmp_path):
    """The bundled corpus cut down (40 biographies, a few questions whose characters they hold), and
    reference CSVs in ../shared/reference's format."""
    data, ref = tmp_path / "data", tmp_path / "ref"
    data.mkdir()
    ref.mkdir()
    wiki = read(os.path.join(DATA, "wiki.txt")).splitlines()[:40]
    (data / "wiki.txt").write_text("\n".join(wiki) + "\n", encoding="utf-8")
    chars = set("".join(wiki))
    for name, n in (("birth_places_train.tsv", 16), ("birth_dev.tsv", 6), ("birth_test_inputs.tsv", 3)):
        lines = [line for line in read(os.path.join(DATA, name)).splitlines() if set(line) - {"\t"} <= chars][:n]
        assert len(lines) == n
        (data / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in ("ref_vanilla_course_s0", "ref_vanilla_course_s1", "ref_perceiver_course_s0"):
        rows = [f"pretrain,{e},{4.0 - 0.1 * e:.4f},6.00e-03" for e in range(1, 6)] + ["finetune,1,1.0000,6.00e-04"]
        (ref / f"{name}.csv").write_text("phase,epoch,mean_loss,lr_after_epoch\n" + "\n".join(rows) + "\n")
    return data, ref


def gpu_check(*args, **env):
    knobs = dict(DEVICE="cpu", PRETRAIN_EPOCHS="2", FINETUNE_EPOCHS="1", PROBE_RUNS="2", PROBE_EPOCHS="1",
                 BISECT_EPOCHS="1", PYTHON=sys.executable, BENCH_ARGS="--reps 1 --rows 2 --questions 2",
                 OMP_NUM_THREADS="1")
    knobs.update(env)
    return subprocess.run(["bash", SCRIPT, *map(str, args)], env=dict(os.environ, **knobs), capture_output=True,
                          text=True, timeout=900)


def table(summary):
    """{stage: (status, wall time, result)} of summary.md's table."""
    rows = [line.split(" | ") for line in summary.splitlines() if line.startswith("| ") and "---" not in line]
    return {r[0][2:]: (r[2], r[3], r[4].rstrip(" |")) for r in rows[1:]}


def test_gpu_check_runs_every_stage_on_cpu_at_a_tiny_size(tmp_path):
    data, ref = tiny_inputs(tmp_path)
    out = gpu_check(data, ref, tmp_path / "gpu")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = tmp_path / "gpu" / "cpu"
    summary = read(results / "summary.md")
    assert summary.strip() in out.stdout  # the table is printed at the end
    stages = table(summary)
    assert list(stages) == ["probe", "tests", "kernels", "vanilla", "perceiver", "bisect", "rope", "recipe",
                            "compiled", "bench"]
    assert all(status == "ok" and wall.endswith(" s") for status, wall, _ in stages.values()), summary
    # a-e in priority order: the probe first, the pipelines (b) from the start, in order; the bench last
    started = re.findall(r"\] (\w+): started", read(results / "log.txt"))
    assert started[0] == "probe" and started[-1] == "bench", started
    pipelines = [s for s in started if s in ("vanilla", "perceiver", "rope", "recipe", "compiled")]
    # two at once (the probe's choice here): the first two start together, in either order
    assert set(pipelines[:2]) == {"vanilla", "perceiver"} and pipelines[2:] == ["rope", "recipe", "compiled"]
    assert started.index("vanilla") < started.index("kernels") and started.index("tests") < started.index("bisect")
    assert re.fullmatch(r"2 at once kept \d+% of the lone run's steps/s: 2 pipelines run at once", stages["probe"][2])
    assert ("passed" if torch.cuda.is_available() else "skipped") in stages["tests"][2]
    assert re.fullmatch(r"training step: attention explicit \(aten::_softmax.*\); evaluation forward: attention "
                        r"explicit \(.*\)", stages["kernels"][2]), stages["kernels"][2]
    bisect = re.findall(r"(\w+): epoch 1 loss [\d.]+, [+-][\d.]+ from the references' mean", stages["bisect"][2])
    assert bisect == ["bf16", "bf16_sdpa_no_cudnn", "bf16_sdpa"], stages["bisect"][2]
    for stage, reference in (("vanilla", "27.8% and 21.7%"), ("perceiver", "13.6%"), ("rope", "40.4%"),
                             ("recipe", None), ("compiled", "eager: the vanilla row")):
        result = stages[stage][2]
        assert "**dev " in result and "/6" in result and (reference is None or reference in result), result
        refs = "loss_vanilla " if stage in ("rope", "recipe", "compiled") else f"ref_{stage}_course_s0 3.800"
        assert "pretraining loss at epoch 2: " in result and refs in result, result
        # the per-epoch loss beside the reference curves, in their format
        csv = read(results / f"loss_{stage}.csv").splitlines()
        assert csv[0] == "phase,epoch,mean_loss,lr_after_epoch" and [r.split(",")[1] for r in csv[1:]] == ["1", "2"]
        assert (results / f"loss_{stage}.png").stat().st_size > 1000
        assert "Correct: " in read(results / "pipelines" / stage / "log.txt")
    assert "pretraining step, vanilla: " in stages["bench"][2] and "\nIn short" in read(results / "bench.md")
    # every command, as it could be typed: the copied inputs shown as DATA and REF
    commands = read(results / "commands.txt")
    for what in ("-m pytest -q", "bench/gpu_check.py probe cpu DATA/wiki.txt 2 1 RESULTS/probe",
                 "bench/gpu_check.py kernels cpu DATA/wiki.txt",
                 "bash bench/pipeline.sh perceiver DATA RESULTS/pipelines/perceiver --max_epochs 2",
                 "FLAGS=--device\\ cpu\\ --checkpoint_minutes\\ 1\\ --max_epochs\\ 1\\ --compile bash bench/pipeline.sh vanilla DATA "
                 "RESULTS/pipelines/compiled",
                 "bash bench/pipeline.sh rope DATA RESULTS/pipelines/recipe --final_epochs 100 --max_epochs 100 "
                 "--max_epochs 2",
                 "bench/reference_curve.py", "bench/bench_speed.py --data_dir DATA --device cpu",
                 "bench/bisect_default.py DATA/wiki.txt RESULTS/bisect --epochs 1 --device cpu --variants bf16 "
                 "bf16_sdpa_no_cudnn bf16_sdpa --reference REF/ref_vanilla_course_s0.csv REF/ref_vanilla_course_s1.csv"):
        assert what in commands, (what, commands)
    assert str(tmp_path) not in commands
    assert read(results / "finished").startswith("finished ") and "exit 0" in read(results / "finished")

    # what a device call brings back: a tarball without params, and the summary
    dest = tmp_path / "dest"
    waited = subprocess.run(["bash", SCRIPT, "--wait", str(dest), "1", str(tmp_path / "gpu")], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHON=sys.executable))
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert sorted(os.listdir(dest)) == ["gpu_check_cpu.tgz", "summary_cpu.md"]
    with tarfile.open(dest / "gpu_check_cpu.tgz") as tar:
        names = tar.getnames()
    assert "cpu/summary.md" in names and "cpu/loss_vanilla.csv" in names and "cpu/pipelines/vanilla/log.txt" in names
    assert "cpu/kernels.md" in names and "cpu/probe.md" in names
    assert not [n for n in names if n.endswith((".params", ".ckpt"))]


def test_gpu_check_reports_a_failing_stage_and_goes_on(tmp_path):
    data, ref = tiny_inputs(tmp_path)
    root = tmp_path / "gpu"
    out = gpu_check(data, ref, root, STAGES="bench probe", BENCH_ARGS="--reps many")
    assert out.returncode == 1, out.stdout + out.stderr
    results = root / "cpu"
    stages = table(read(results / "summary.md"))
    assert list(stages) == ["probe", "bench"]
    assert stages["bench"][0] == "**FAILED** (exit 2)" and stages["probe"][0] == "ok"
    assert "invalid int value: 'many'" in stages["bench"][2]  # the stage's last words
    assert "exit 1, failed: bench" in read(results / "finished")

    # the same command again keeps what ended ok
    again = gpu_check(data, ref, root, STAGES="probe")
    assert again.returncode == 0 and "probe: ended ok in an earlier run: kept" in again.stdout

    # a pipeline cut off with the device time: --wait also brings back, in pieces, what resumes it
    for stage, params in (("vanilla", "vanilla.pretrain.params.ckpt"), ("recipe", "rope.pretrain.params.ckpt")):
        (results / "stages" / f"{stage}.status").write_text("running 0\n")
        (results / "pipelines" / stage).mkdir(parents=True)
        (results / "pipelines" / stage / params).write_bytes(stage.encode() * 1000)
    dest = tmp_path / "dest"
    subprocess.run(["bash", SCRIPT, "--wait", str(dest), "1", str(root)], capture_output=True, timeout=120,
                   env=dict(os.environ, PYTHON=sys.executable))
    # one pipeline's only, the first in priority order (64 MiB come back from a device call in all)
    assert sorted(os.listdir(dest)) == ["gpu_check_cpu.tgz", "summary_cpu.md", "vanilla.pretrain.params.ckpt.part0"]
    assert (dest / "vanilla.pretrain.params.ckpt.part0").read_bytes() == b"vanilla" * 1000
