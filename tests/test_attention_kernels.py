"""
Training never runs SDPA's kernels with dropout (issue: the one full GPU pretraining that did,
in bf16 on an H100, never left the loss plateau). Off the CPU, attend uses SDPA only where no
dropout applies; under --compile, inductor must not rewrite the explicit attention into SDPA.
"""
import pytest
import torch

import model
import trainer
from conftest import small_config


def sdpa_calls(monkeypatch):
    """Every scaled_dot_product_attention call's dropout_p, recorded (the call still runs)."""
    calls, real = [], torch.nn.functional.scaled_dot_product_attention

    def recording(*args, dropout_p=0.0, **kwargs):
        calls.append(dropout_p)
        return real(*args, dropout_p=dropout_p, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return calls


@pytest.mark.parametrize("perceiver", [False, True])
@pytest.mark.parametrize("rope", [False, True])
def test_training_off_the_cpu_never_calls_sdpa_with_dropout(perceiver, rope, monkeypatch):
    """The meta device takes CUDA's code path (not the CPU's) without a GPU: training there
    computes attention explicitly; evaluation uses SDPA, with no dropout."""
    if perceiver and rope:
        pytest.skip("the course has no RoPE Perceiver")
    calls = sdpa_calls(monkeypatch)
    gpt = model.GPT(small_config(perceiver, rope=rope)).to("meta")
    x = torch.zeros(2, 16, dtype=torch.long, device="meta")
    gpt.train()
    _, loss = gpt(x, x)
    loss.backward()
    assert calls == []
    gpt.eval()
    with torch.no_grad():
        gpt(x)
    assert calls and all(p == 0 for p in calls)


def test_attention_sdpa_forces_sdpa_with_dropout_on_cpu(monkeypatch):
    """The GPU bisect's and the CPU tests' way into SDPA's branch: dropout inside its kernel."""
    calls = sdpa_calls(monkeypatch)
    gpt = model.GPT(small_config(attention="sdpa"))
    gpt.train()
    gpt(torch.zeros(2, 16, dtype=torch.long))
    assert calls == [0.1] * 4


class CanonicalAttention(torch.nn.Module):
    """Attention as inductor's attention patterns know it (softmax, dropout, matmul), which it rewrites."""

    def forward(self, q, k, v):
        weights = torch.matmul(q, k.transpose(-2, -1)).div(4.0).softmax(dim=-1)
        return torch.nn.functional.dropout(weights, p=0.1, training=True).matmul(v)


def compiled_code(module, *inputs):
    """(the attention rewrites inductor made, the generated code) of one forward and backward."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code
    torch._dynamo.reset()
    counters.clear()

    def step():
        out = module(*inputs)
        (out[1] if isinstance(out, tuple) else out).sum().backward()
    _, code = run_and_get_code(step)
    return counters["inductor"]["fuse_attention"], "\n".join(code)


def test_compiled_training_keeps_attention_out_of_sdpa(monkeypatch):
    """
    trainer.compile_model (what --compile runs) on CPU at a tiny size: the graph inductor makes for
    a training step holds no SDPA, for the model itself (explicit attention, nn.Dropout, as on a GPU)
    and for the attention pattern inductor rewrites by default (2 rewrites without compile_model's
    setting: so this test fails if the setting goes).
    """
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config, "pattern_matcher", True)  # torch's default; compile_model sets it
    q, k, v = (torch.randn(2, 4, 16, 16, requires_grad=True) for _ in range(3))
    fused, code = compiled_code(trainer.compile_model(CanonicalAttention()), q, k, v)
    assert fused == 0 and "scaled_dot_product" not in code

    gpt = model.GPT(small_config(plain=True))  # explicit attention with nn.Dropout: a GPU's training
    gpt.train()
    x = torch.randint(0, 40, (2, 16))
    fused, code = compiled_code(trainer.compile_model(gpt), x, x)
    assert fused == 0 and "scaled_dot_product" not in code and "flash_attention" not in code
