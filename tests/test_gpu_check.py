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
from conftest import ROOT, needs_cuda
from decoding import predict_places
from inputs import encode, read_questions
from test_model import sdpa_calls

DATA = os.path.join(ROOT, "data")
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("tq,tk", [(128, 128), (64, 128), (128, 64)])
def test_bf16_sdpa_keeps_the_course_mask_corner(device, tq, tk):
    """
    SDPA in bf16 (training under --dtype bfloat16 with --dropout 0 on a GPU, or attention="sdpa" as
    the GPU check's bisect has it) may pick flash or memory-efficient kernels, forward and backward,
    on CPU too: for the Perceiver's non-square attention (m = 64 queries on 128 keys down, 128 on 64
    up) they must keep the course's mask[:Tq, :Tk] (query i sees keys 0..i; flash attention's own
    causal mask is bottom-right aligned). Against the course's explicit computation in float32 on
    the same bf16-rounded inputs, within bf16's rounding.
    """
    torch.manual_seed(0)
    conf = argparse.Namespace(n_embd=256, n_head=8, block_size=128, attn_pdrop=0.1, resid_pdrop=0.1)
    course_attn, fast_attn = (attention.CausalSelfAttention(argparse.Namespace(**vars(conf), plain=plain,
                                                                               attention="sdpa"))
                              .to(device).eval() for plain in (True, False))
    q, k, v = (torch.randn(4, 8, t, 32, device=device).bfloat16().float().requires_grad_() for t in (tq, tk, tk))
    course = course_attn.attend(q, k, v)
    grad = torch.randn_like(course)
    course_grads = torch.autograd.grad(course, (q, k, v), grad)
    fast_inputs = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    with sdpa_kernel_or_skip(None, *fast_inputs, grad.bfloat16(), (0.0,)), sdpa_calls() as calls:
        fast = fast_attn.attend(*fast_inputs)
    assert calls == [0.0]
    fast_grads = torch.autograd.grad(fast, fast_inputs, grad.bfloat16())
    for mine, theirs in zip((fast, *fast_grads), (course, *course_grads)):
        assert mine.dtype == torch.bfloat16
        assert (mine.float() - theirs).abs().max() <= 0.05 * theirs.abs().max() + 0.01


# Attention with dropout as training computes it: the default ("auto") is the course's explicit
# computation on every device (fast_dropout's mask on CPU, nn.Dropout on CUDA); attention="sdpa" is
# SDPA with its dropout inside (the GPU check's bisect), on CUDA also with each of its kernels forced
DROPOUT_WAYS = [("cpu", "auto", None), ("cpu", "sdpa", None)] + [
    pytest.param("cuda", way, backend, marks=needs_cuda) for way, backend in
    [("auto", None), ("sdpa", None), ("sdpa", "FLASH_ATTENTION"), ("sdpa", "EFFICIENT_ATTENTION"),
     ("sdpa", "CUDNN_ATTENTION"), ("sdpa", "MATH")]]


def dropout_layer(device, way, **sizes):
    """A training-mode attention layer with the course's dropout 0.1, computing as `way` says."""
    conf = argparse.Namespace(attn_pdrop=0.1, resid_pdrop=0.1, plain=False, attention=way, **sizes)
    return attention.CausalSelfAttention(conf).to(device).train()


def sdpa_kernel_or_skip(backend, q, k, v, g, dropout_ps=(0.1,)):
    """
    sdpa_kernel(backend) (backend None: SDPA's own choice), after checking that SDPA itself, called
    as attend calls it with each dropout p, runs forward and backward for these inputs: skip where
    it cannot (a forced backend without a kernel for them; or, under ATEN_CPU_CAPABILITY=avx2 on an
    AMX CPU, torch's bf16 CPU kernel: "pack_vnni2 is only supported when avx512 is supported"). Only
    SDPA is asked here: attend's own errors are never skipped.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    allowed = lambda: sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext()
    try:
        for p in dropout_ps:
            with allowed():
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
                torch.autograd.grad(out, (q, k, v), g)
    except RuntimeError as e:
        pytest.skip(f"SDPA's {backend or 'choice'} in {q.dtype} on {q.device}: {str(e).splitlines()[0][:120]}")
    return allowed()


def check_path(calls, way):
    """attend's calls to SDPA in training: none for the explicit computation, with dropout 0.1 for "sdpa"."""
    if way == "sdpa":
        assert calls and set(calls) == {0.1}, calls
    else:
        assert calls == [], calls


@pytest.mark.parametrize("device,way,backend", DROPOUT_WAYS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_dropout_has_the_expectation_of_no_dropout(device, way, backend, dtype):
    """
    Attention dropout as training does it (DROPOUT_WAYS): dropped weights scaled by 1/(1-p)
    leave the output's and the gradients' expectation that of no dropout, as nn.Dropout's do. A
    kernel that drops without rescaling, or with another p, is off by 10% or more; 256 draws
    average to about 1.5%.
    """
    torch.manual_seed(0)
    attn = dropout_layer(device, way, n_embd=64, n_head=2, block_size=64)
    q, k, v = (torch.randn(2, 2, 64, 32, device=device).to(dtype).requires_grad_() for _ in range(3))
    g = torch.randn(2, 2, 64, 32, device=device).to(dtype)

    def output_and_grads():
        out = attn.attend(q, k, v)
        return [t.float() for t in (out, *torch.autograd.grad(out, (q, k, v), g))]

    with sdpa_kernel_or_skip(backend, q, k, v, g, (0.0, 0.1)) if way == "sdpa" else contextlib.nullcontext():
        attn.eval()
        exact = output_and_grads()
        attn.train()
        draws = 256
        mean = [torch.zeros_like(t) for t in exact]
        with sdpa_calls() as calls:
            for _ in range(draws):
                for m, t in zip(mean, output_and_grads()):
                    m += t / draws
    check_path(calls, way)
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


@pytest.mark.parametrize("device,way,backend", DROPOUT_WAYS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_dropout_backward_uses_the_forwards_mask(device, way, backend, dtype):
    """
    Attention with dropout as training does it (DROPOUT_WAYS), at the handout's shapes (128
    positions, head size 32): output and gradients must be those of ONE dropout mask, the
    forward's. The mask is read back from the forward (dropped_attention_weights); output and
    gradients are then recomputed from it in float64. A kernel whose backward redraws the mask
    (a seed/offset mix-up) keeps the expectation of no dropout (the test above) but trains on
    noise wherever attention matters: its gradients are off by tens of percent here.
    """
    torch.manual_seed(0)
    attn = dropout_layer(device, way, n_embd=256, n_head=8, block_size=128)
    # laid out as attend's inputs in training: (B, T, nh, hs) projections seen as (B, nh, T, hs)
    q, k, v, g = (torch.randn(2, 128, 8, 32, device=device).to(dtype).transpose(1, 2) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    with sdpa_kernel_or_skip(backend, q, k, v, g) if way == "sdpa" else contextlib.nullcontext(), \
            sdpa_calls() as calls:
        weights = dropped_attention_weights(attn.attend, q, k, seed=1).double()
        torch.manual_seed(1)
        out = attn.attend(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), g)
    check_path(calls, way)

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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("variant", ["vanilla", "perceiver", "rope"])
def test_sdpa_decoding_layouts_agree_with_the_explicit_computation(variant, device, monkeypatch):
    """
    A GPU decodes every prompt in one padded batch with SDPA (the vanilla and RoPE models
    left-padded, with their key/value cache and its padding mask): the predictions of decoding by
    exact length with the course's explicit attention on CPU. On CPU with attention="sdpa" (the same
    SDPA calls, masks included), on CUDA as evaluate runs there ("auto"). In float64, so that no
    near-tie of an untrained model's logits is settled by rounding (top-two gaps down to 2e-6 were
    seen on the course's dev prompts).
    """
    data = os.environ.get("A5_DATA_DIR") or DATA
    pre = dataset.CharCorruptionDataset(read(os.path.join(data, "wiki.txt")), 128)
    mask_id = pre.stoi[pre.MASK_CHAR]
    prompts = [encode(pre.stoi, q) + [mask_id] for _, q, _ in read_questions(os.path.join(data, "birth_dev.tsv"))]
    every = 20 if variant == "perceiver" else 5  # the CPU's Perceiver recomputes every position
    args = argparse.Namespace(variant=variant, bottleneck_dim=64, plain=False)
    models = {}
    for way in ("explicit", "sdpa" if device == "cpu" else "auto"):
        monkeypatch.setattr(run.model.GPTConfig, "attention", way)  # what build_model's config gets
        torch.manual_seed(0)
        models[way] = run.build_model(args, pre.vocab_size).double().eval()
    explicit, fast = models.values()
    assert all(torch.equal(a, b) for a, b in zip(explicit.state_dict().values(), fast.state_dict().values()))
    steps = 32 if device != "cpu" else 12  # 12 characters: enough to compare the layouts, a third of the cost
    exact = predict_places(explicit, prompts[::every], pre.itos, mask_id, steps, bucket=1)
    fast.to(device)
    masks = []
    with sdpa_calls(masks):  # a GPU's default: one padded batch (all the prompts there, the same few here)
        one_batch = predict_places(fast, prompts if device != "cpu" else prompts[::every], pre.itos, mask_id,
                                   steps, bucket=128)
    assert len(set(exact)) > 1 and len({len(p) for p in prompts[::every]}) > 8
    assert (one_batch[::every] if device != "cpu" else one_batch) == exact
    assert masks and all(masks) == (variant != "perceiver")  # the cache's padding mask, or is_causal
    if device != "cpu":
        assert one_batch == predict_places(fast, prompts, pre.itos, mask_id, steps, bucket=1)


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
                 "--batch_size 32 --dropout 0 --mix_questions_path DATA/birth_places_train.tsv --max_epochs 2",
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
