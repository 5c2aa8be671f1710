import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch

import hardware
import model
from conftest import SRC, needs_cuda, small_config


def full_config(perceiver=False, **kw):
    if perceiver:
        kw.update(perceiver=True, bottleneck_dim=64)
    return model.GPTConfig(256, 128, n_layer=4, n_head=8, n_embd=256, **kw)


def course_keys(perceiver):
    """The course reference's state_dict keys and shapes, written out by hand."""
    d = 256
    def attn(p, mask):
        out = {f"{p}.{n}.{w}": ((d, d) if w == "weight" else (d,))
               for n in ("key", "query", "value", "proj") for w in ("weight", "bias")}
        out[f"{p}.mask"] = (1, 1, mask, mask)
        return out
    def block(p, mask):
        out = {f"{p}.{ln}.{w}": (d,) for ln in ("ln1", "ln2") for w in ("weight", "bias")}
        out.update(attn(f"{p}.attn", mask))
        out.update({f"{p}.mlp.0.weight": (4 * d, d), f"{p}.mlp.0.bias": (4 * d,),
                    f"{p}.mlp.2.weight": (d, 4 * d), f"{p}.mlp.2.bias": (d,)})
        return out
    keys = {"tok_emb.weight": (256, d), "pos_emb": (1, 128, d), "ln_f.weight": (d,), "ln_f.bias": (d,),
            "head.weight": (256, d)}
    if perceiver:
        keys.update(block("down_block", 128))
        keys["down_block.C"] = (1, 64, d)
        for i in range(2):
            keys.update(block(f"blocks.{i}", 64))
        keys.update(block("up_block", 128))
    else:
        for i in range(4):
            keys.update(block(f"blocks.{i}", 128))
    return keys


@pytest.mark.parametrize("perceiver,count", [(False, 3_323_392), (True, 3_339_776)])
def test_parameter_count_and_state_dict(perceiver, count):
    config = full_config(perceiver)
    gpt = model.GPT(config)
    assert sum(p.numel() for p in gpt.parameters()) == count
    assert {k: tuple(v.shape) for k, v in gpt.state_dict().items()} == course_keys(perceiver)
    assert config.block_size == 128 and gpt.get_block_size() == 128  # restored after the bottleneck blocks
    for name, buf in gpt.named_buffers():
        assert torch.equal(buf, torch.tril(torch.ones_like(buf))), name


def test_architecture_details():
    gpt = model.GPT(full_config(True))
    assert isinstance(gpt.blocks[0].mlp[1], torch.nn.GELU) and gpt.blocks[0].mlp[1].approximate == "none"
    assert gpt.head.bias is None
    assert torch.count_nonzero(gpt.pos_emb) == 0
    assert 0.015 < gpt.head.weight.std().item() < 0.025
    assert torch.all(gpt.ln_f.weight == 1) and torch.all(gpt.blocks[0].attn.key.bias == 0)
    bound = (6 / (64 * 256 + 1 * 256)) ** 0.5  # xavier-uniform of (1, 64, 256): fan_in 64*256, fan_out 256
    assert gpt.down_block.C.abs().max() <= bound and gpt.down_block.C.abs().max() > 0.9 * bound


@pytest.mark.parametrize("perceiver", [False, True])
@pytest.mark.parametrize("way", ["plain", "auto", "sdpa"])
@pytest.mark.parametrize("train", [False, True])
def test_causal(perceiver, way, train):
    """The course's computation (plain), the default (auto: explicit on CPU) and SDPA's kernels (sdpa)."""
    torch.manual_seed(0)
    config = small_config(perceiver, plain=way == "plain", attention="auto" if way == "plain" else way,
                          embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    gpt = model.GPT(config).train(train)
    idx = torch.randint(0, 40, (3, 16))
    for t in (0, 5, 9, 15):
        other = idx.clone()
        other[:, t + 1:] = torch.randint(0, 40, (3, 15 - t))
        a, _ = gpt(idx)
        b, _ = gpt(other)
        assert torch.allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6), f"position {t} saw the future"
        if t < 15:
            assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("perceiver", [False, True])
def test_shorter_inputs(perceiver):
    gpt = model.GPT(small_config(perceiver)).eval()
    idx = torch.randint(0, 40, (2, 16))
    full, _ = gpt(idx)
    for t in (1, 3, 8, 12):
        part, _ = gpt(idx[:, :t])
        assert part.shape == (2, t, 40)
        assert torch.allclose(part, full[:, :t], atol=1e-5)


def test_loss_ignores_pad():
    gpt = model.GPT(small_config()).eval()
    idx = torch.randint(2, 40, (2, 16))
    targets = torch.randint(2, 40, (2, 16))
    targets[:, 10:] = 0
    logits, loss = gpt(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, :10].reshape(-1, 40), targets[:, :10].reshape(-1))
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("perceiver", [False, True])
def test_sdpa_attention_matches_course_attention(perceiver, device):
    """
    scaled_dot_product_attention (attention="sdpa": SDPA everywhere, CPU included) and the
    course's explicit score tensor, handout-size models in training mode without dropout: the
    same loss and gradients.
    """
    torch.manual_seed(0)
    kw = dict(embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0)
    plain = model.GPT(full_config(perceiver, plain=True, **kw)).to(device)
    fast = model.GPT(full_config(perceiver, attention="sdpa", **kw)).to(device)
    fast.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 256, (4, 128), device=device)
    targets = torch.randint(0, 256, (4, 128), device=device)
    losses, grads = [], []
    with sdpa_calls() as calls:
        for gpt in (plain, fast):
            _, loss = gpt(idx, targets)
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten() for p in gpt.parameters()]))
    assert len(calls) == 4  # fast's four attention layers (the Perceiver's: down, 2 blocks, up), once each
    assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0])
    assert (grads[0] - grads[1]).norm() <= 1e-5 * grads[0].norm()


@contextlib.contextmanager
def sdpa_calls(masks=None):
    """
    The dropout_p of every call to torch.nn.functional.scaled_dot_product_attention (attention.py's
    F) inside the block and, into the list masks if given, whether the call had an attn_mask.
    """
    import attention
    calls, sdpa = [], attention.F.scaled_dot_product_attention

    def counted(*args, dropout_p=0.0, **kw):
        calls.append(dropout_p)
        if masks is not None:
            masks.append(kw.get("attn_mask") is not None)
        return sdpa(*args, dropout_p=dropout_p, **kw)
    attention.F.scaled_dot_product_attention = counted
    try:
        yield calls
    finally:
        attention.F.scaled_dot_product_attention = sdpa


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_attention_setting_decides_where_sdpa_computes(device):
    """
    config.attention: "auto" (the default, also for a config without the attribute) calls SDPA
    only off the CPU and only where no dropout applies; training with dropout is the course's
    explicit computation on every device. "sdpa" calls it everywhere, dropout inside; "explicit"
    and --plain never.
    """
    import argparse
    import attention
    q, k, v = (torch.randn(2, 4, 8, 8, device=device) for _ in range(3))
    made = {"auto": dict(), "namespace": None, "sdpa": dict(attention="sdpa"),
            "explicit": dict(attention="explicit"), "plain": dict(attention="sdpa", plain=True)}
    gpu = device != "cpu"
    expected = {  # (training with dropout, evaluating): SDPA's dropout_p, or None where it is not called
        "auto": (None, 0.0 if gpu else None), "namespace": (None, 0.0 if gpu else None),
        "sdpa": (0.1, 0.0), "explicit": (None, None), "plain": (None, None)}
    for name, kw in made.items():
        config = (argparse.Namespace(n_embd=32, n_head=4, block_size=8, attn_pdrop=0.1, resid_pdrop=0.1)
                  if kw is None else model.GPTConfig(40, 8, n_embd=32, n_head=4, **kw))
        layer = attention.CausalSelfAttention(config).to(device)
        seen = []
        for train in (True, False):
            with sdpa_calls() as calls:
                layer.train(train).attend(q, k, v)
            seen.append(calls[0] if calls else None)
        assert tuple(seen) == expected[name], name
    # no dropout configured: nothing is dropped in training either, and "auto" may use SDPA off the CPU
    layer = attention.CausalSelfAttention(model.GPTConfig(40, 8, n_embd=32, n_head=4, attn_pdrop=0.0)).to(device)
    with sdpa_calls() as calls:
        layer.train().attend(q, k, v)
    assert calls == ([0.0] if gpu else [])


def test_cheap_dropout_drops_p_of_every_position():
    """The CPU mask cuts four 16-bit thresholds from each random word: each of the four lanes must drop p."""
    from fast_dropout import Dropout
    torch.manual_seed(0)
    drop = Dropout(0.1).train()
    y = drop(torch.ones(250_000, 4))
    dropped = (y == 0).float().mean(dim=0)
    assert torch.all((dropped - 0.1).abs() < 0.004), dropped
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    assert torch.equal(drop.eval()(torch.ones(8)), torch.ones(8))


def _gradient(gpt, x, y, bf16):
    gpt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, loss = gpt(x, y)
    loss.backward()
    return torch.cat([p.grad.flatten().double() for p in gpt.parameters()])


@pytest.mark.parametrize("scale,bf16_exact", [(1, True), (40, False)])
def test_bf16_gradients_break_on_large_attention_logits(scale, bf16_exact):
    """
    Where bf16 stops being safe: attention logits in the thousands (what the handout's lr grew
    under a decay rule that exempted LayerNorm gains), where bf16's rounding of q and k
    reorders near-tied keys and the gradient becomes noise. Scaling query and key weights by 40
    recreates that regime in a tiny model; bench/grad_precision.py checks real params.
    """
    torch.manual_seed(0)
    gpt = model.GPT(small_config(block_size=48, n_embd=64, embd_pdrop=0, resid_pdrop=0, attn_pdrop=0))
    with torch.no_grad():
        for block in gpt.blocks:
            block.attn.query.weight.mul_(scale)
            block.attn.key.weight.mul_(scale)
    x, y = torch.randint(2, 40, (16, 48)), torch.randint(0, 40, (16, 48))
    exact = _gradient(gpt.double(), x, y, False)
    gpt.float()
    cos = torch.nn.functional.cosine_similarity
    assert cos(_gradient(gpt, x, y, False), exact, dim=0) > 0.99999
    bf16 = cos(_gradient(gpt, x, y, True), exact, dim=0)
    assert bf16 > 0.999 if bf16_exact else bf16 < 0.6


# What torch.cpu.get_capabilities() reports (CPUID) on CPUs that CI and students' VMs run on. Every
# one has AVX-512 with bw, vl and dq, so torch.ops.mkldnn._is_mkldnn_bf16_supported() says True on all
# four; only Zen 4 and Sapphire Rapids have the BF16 instructions, and only Sapphire Rapids FP16 (and AMX).
X86 = ["sse", "sse2", "sse3", "ssse3", "sse4_1", "sse4_2", "popcnt", "avx", "f16c", "fma3", "avx2", "bmi", "bmi2"]
SKYLAKE_SP = X86 + ["avx512_f", "avx512_cd", "avx512_bw", "avx512_dq", "avx512_vl"]  # GCP n1, AWS c5
ICE_LAKE_SERVER = SKYLAKE_SP + ["avx512_ifma", "avx512_vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg",
                                "avx512_vpopcntdq"]  # GCP n2, AWS c6i
ZEN_4 = ICE_LAKE_SERVER + ["avx512_bf16"]  # AMD EPYC Genoa (GCP n2d, c3d), Ryzen 7000
SAPPHIRE_RAPIDS = ICE_LAKE_SERVER + ["avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16",
                                     "amx_int8"]  # GCP c3, AWS m7i
FLAGS = SAPPHIRE_RAPIDS + ["sse4a", "fma4", "avx512_4vnniw", "avx512_4fmaps", "avx512_vp2intersect", "amx_fp16"]


def pretend_cpu(monkeypatch, flags, capability="AVX512"):
    """A CPU whose CPUID shows these flags (torch's key for every flag it knows, False where missing)."""
    caps = {f: f in flags for f in FLAGS}
    caps.update(architecture="x86_64", cpu_name="fake", num_sockets=1, num_physical_cores=2)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    # the check the decision once asked, which counts AVX-512 alone: it must not decide
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: True)


@pytest.mark.parametrize("flags,bf16,fp16", [(SKYLAKE_SP, False, False), (ICE_LAKE_SERVER, False, False),
                                             (ZEN_4, True, False), (SAPPHIRE_RAPIDS, True, True)],
                         ids=["Skylake-SP", "Ice Lake server", "Zen 4", "Sapphire Rapids"])
def test_cpus_train_in_bf16_only_with_its_instructions(flags, bf16, fp16, monkeypatch, capsys):
    """
    bf16 is native only with AVX512-BF16 or AMX-BF16 (fp16: AVX512-FP16 or AMX-FP16); elsewhere
    oneDNN emulates it, no faster than float32. auto trains in bf16 exactly there, and a forced
    type that would be emulated falls back to float32 with a note.
    """
    pretend_cpu(monkeypatch, flags)
    assert hardware.native_dtype("bfloat16", "cpu") == bf16 and hardware.native_dtype("float16", "cpu") == fp16
    assert hardware.native_dtype("float32", "cpu")
    assert hardware.pick_dtype("auto", "cpu") == ("bfloat16" if bf16 else "float32")
    assert hardware.pick_dtype("auto", "cpu", plain=True) == "float32"
    assert capsys.readouterr().err == ""
    assert hardware.pick_dtype("bfloat16", "cpu") == ("bfloat16" if bf16 else "float32")
    assert ("emulated" in capsys.readouterr().err) != bf16
    assert hardware.pick_dtype("float16", "cpu") == ("float16" if fp16 else "float32")
    assert ("training in float32" in capsys.readouterr().err) != fp16
    # the same CPU under ATEN_CPU_CAPABILITY=avx2 (torch then dispatches AVX2 kernels): nothing native
    pretend_cpu(monkeypatch, flags, capability="AVX2")
    assert not hardware.native_dtype("bfloat16", "cpu") and not hardware.native_dtype("float16", "cpu")
    assert hardware.pick_dtype("auto", "cpu") == "float32"


def test_a_torch_that_cannot_name_the_instructions_trains_in_float32(monkeypatch):
    pretend_cpu(monkeypatch, SAPPHIRE_RAPIDS)
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    assert not hardware.native_dtype("bfloat16", "cpu")
    assert hardware.pick_dtype("auto", "cpu") == "float32"
    assert hardware.pick_dtype("auto", "mps") == "float32"


def test_this_cpus_decision_is_what_it_reports():
    """The real calls, on whatever CPU runs the tests (AVX2-only, AVX-512 with or without BF16, ARM)."""
    has = torch.cpu.get_capabilities()
    dispatch = torch.backends.cpu.get_cpu_capability()
    for dtype, kind in (("bfloat16", "bf16"), ("float16", "fp16")):
        native = dispatch != "AVX2" and bool(has.get(f"avx512_{kind}") or has.get(f"amx_{kind}"))
        assert hardware.native_dtype(dtype, "cpu") == native, (dtype, dispatch)
        if dtype == "bfloat16":
            assert hardware.pick_dtype("auto", "cpu") == ("bfloat16" if native else "float32")


def test_aten_avx2_switch_means_no_bf16(tmp_path):
    """
    ATEN_CPU_CAPABILITY=avx2 imitates an AVX2-only CPU (how CI checks the float32 default on any
    CPU): in a process started with it, torch dispatches AVX2 kernels and run.py trains in float32,
    and a forced bfloat16 falls back with a note, whatever the CPU's own instructions.
    """
    (tmp_path / "wiki.txt").write_text("Ada Lovelace. Ada Lovelace was born in London.\n" * 3, encoding="utf-8")
    code = ("import sys, torch, hardware, run; print(torch.backends.cpu.get_cpu_capability()); "
            "print(hardware.pick_dtype('bfloat16', 'cpu')); run.main(sys.argv[1:])")
    out = subprocess.run([sys.executable, "-c", code, "pretrain", "vanilla", "wiki.txt", "--writing_params_path",
                          "p.params", "--max_epochs", "1", "--device", "cpu"], cwd=tmp_path, capture_output=True,
                         text=True, env=dict(os.environ, ATEN_CPU_CAPABILITY="avx2", PYTHONPATH=SRC))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[:2] == ["AVX2", "float32"], out.stdout
    assert "no bfloat16 arithmetic of its own" in out.stderr
    assert re.search(r"^pretrain vanilla on cpu \(\d+ threads, AVX2\), float32: 4 rows, ", out.stdout, re.M), out.stdout


def pretend_gpu(monkeypatch, capability):
    """
    torch's own is_bf16_supported answers for a card of this compute capability: the real
    function runs, only what it asks of the driver is faked. As on a real T4, a bf16
    tensor can be made below 8.0 (emulation), so the default call says True there.
    """
    props = type("Props", (), {"major": capability[0], "minor": capability[1], "name": "fake"})()
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)


@pytest.mark.parametrize("card,capability,bf16", [
    ("V100", (7, 0), False), ("T4", (7, 5), False), ("A100", (8, 0), True), ("L4", (8, 9), True),
    ("H100", (9, 0), True)])
def test_gpus_train_in_float32_and_bf16_only_where_native(card, capability, bf16, monkeypatch, capsys):
    """
    auto gives float32 on every GPU: on an H100 the handout's pretraining in bf16 failed
    (results/gpu/README.md). A forced bfloat16 is kept where the card computes it, and on
    cards that only emulate it gets the same note as an AVX2 CPU: torch.cuda.is_bf16_supported()
    counts emulation by default, so it says True on a T4 (emulated matmuls, no fused SDPA).
    """
    pretend_gpu(monkeypatch, capability)
    assert torch.cuda.is_bf16_supported(), "torch's default counts emulation: the fake must show it"
    for device in ("cuda", "cuda:1"):
        assert hardware.pick_dtype("auto", device) == "float32"
        assert hardware.pick_dtype("auto", device, plain=True) == "float32"
    assert hardware.pick_dtype("bfloat16", "cuda") == ("bfloat16" if bf16 else "float32")
    assert ("emulated" in capsys.readouterr().err) != bf16
    assert hardware.pick_dtype("float16", "cuda") == "float16"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("tq,tk", [(8, 8), (4, 8), (8, 4)])
def test_sdpa_is_causal_is_the_course_mask_corner(device, tq, tk):
    """
    attend's SDPA branch calls scaled_dot_product_attention(is_causal=True) (on a GPU when
    evaluating, and everywhere with attention="sdpa"); for the Perceiver's cross-attention
    (Tq = m < Tk = l down, Tq = l > Tk = m up) that must be the course's mask[:Tq, :Tk], i.e.
    top-left aligned: query i sees keys 0..i.
    """
    import attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, t, 16, device=device) for t in (tq, tk, tk))
    layers = {way: attention.CausalSelfAttention(model.GPTConfig(40, 16, n_embd=48, n_head=3, attn_pdrop=0.0,
                                                                 plain=way == "plain", attention=way))
              .to(device).eval() for way in ("plain", "auto", "sdpa")}
    course = layers["plain"].attend(q, k, v)  # the course's computation with its mask[:Tq, :Tk]
    assert not torch.allclose(torch.nn.functional.scaled_dot_product_attention(q, k, v), course)  # the mask matters
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(sdpa, course, atol=1e-5)
    with sdpa_calls() as calls:
        for way in ("auto", "sdpa"):  # auto: SDPA on a GPU, the explicit computation on CPU
            assert torch.allclose(layers[way].attend(q, k, v), course, atol=1e-5), way
    assert len(calls) == (2 if device != "cpu" else 1)
