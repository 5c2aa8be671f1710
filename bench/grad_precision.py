"""
Is bf16 (or fp16) autocast safe to train these params further? For each params
file (or trainer checkpoint), on one batch of pretraining rows with dropout off:
the largest attention logit of each layer, and the cosine between the gradient
under autocast and the exact gradient (float64). float32's own cosine is
printed beside it as the yardstick (1.0000 in every case measured).

  python bench/grad_precision.py WIKI PARAMS [PARAMS ...] [--rows 128] [--dtype float16] [--variant perceiver --bottleneck_dim 64]

Measured on the handout's pretraining (results/README.md, "bf16"): logits in
the hundreds give a cosine of 0.58-0.99, tens give 1.000; logits of ~2,000
(grown under a decay rule that exempted LayerNorm gains) gave -0.2 to 0.6.
"""

import argparse
import math
import os
import random
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import attention  # noqa: E402
import dataset  # noqa: E402
import run  # noqa: E402


def gradient(gpt, x, y, dtype=None):
    """The loss and the gradient, in autocast to dtype if given (fp16's loss scaled as GradScaler starts)."""
    gpt.zero_grad()
    scale = 2.0 ** 16 if dtype == torch.float16 else 1.0
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        _, loss = gpt(x, y)
    (loss * scale).backward()
    return loss.item(), torch.cat([p.grad.flatten().double() / scale for p in gpt.parameters()])


def largest_logits(gpt, x):
    """max |q k^T / sqrt(hs)| over the causal positions, per attention layer in call order."""
    found, attend = [], attention.CausalSelfAttention.attend

    def spy(self, q, k, v, mask=None):
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        m = self.mask[:, :, :q.size(-2), :k.size(-2)] if mask is None else mask
        found.append(scores.masked_fill(m == 0, 0).abs().max().item())
        return attend(self, q, k, v, mask)
    attention.CausalSelfAttention.attend = spy
    try:
        with torch.no_grad():
            gpt(x)
    finally:
        attention.CausalSelfAttention.attend = attend
    return found


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("wiki")
    argp.add_argument("params", nargs="+", help="params files or trainer checkpoints (<params>.ckpt)")
    argp.add_argument("--rows", type=int, default=128, help="pretraining rows in the batch")
    argp.add_argument("--variant", default="vanilla", choices=["vanilla", "perceiver"])
    argp.add_argument("--bottleneck_dim", type=int, default=32)
    argp.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"], help="the autocast to judge")
    argp.set_defaults(plain=False)  # run.build_model reads it
    args = argp.parse_args()

    with open(args.wiki, encoding="utf-8") as f:
        ds = dataset.CharCorruptionDataset(f.read(), 128)
    random.seed(0)
    rows = [ds[i % len(ds)] for i in range(args.rows)]
    x, y = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    cos = torch.nn.functional.cosine_similarity

    dtype = getattr(torch, args.dtype)
    print(f"| params | loss | largest attention logit per layer | float32 cosine | {args.dtype} cosine |\n"
          "| --- | --- | --- | --- | --- |")
    for path in args.params:
        # params, or a trainer checkpoint, which holds them under "model"; never a full unpickling
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        gpt = run.build_model(args, ds.vocab_size)
        gpt.load_state_dict(state)
        gpt.eval()  # dropout off: the gradients differ only by precision
        logits = largest_logits(gpt, x)
        loss, exact = gradient(gpt.double(), x, y)
        gpt.float()
        fp32, low = cos(gradient(gpt, x, y)[1], exact, dim=0), cos(gradient(gpt, x, y, dtype)[1], exact, dim=0)
        print(f"| {path} | {loss:.3f} | {' / '.join(f'{v:,.0f}' for v in logits)} | {fp32:.4f} | {low:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
