"""
Would bf16 be safe if only the attention logits were exact? A prototype, kept
as it was run: under bf16 autocast, the query and key projections, q k^T and
the softmax of every self-attention layer run in float32 (the rest of the
model in bf16). Prints, for each params file or checkpoint, the cosine of the
all-bf16 and of this mixed gradient to the exact (float64) one, on the same
128 rows as bench/grad_precision.py.

  python results/precision_probe/qk_float32.py WIKI PARAMS [PARAMS ...]
"""
import argparse
import math
import os
import random
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import attention  # noqa: E402
import dataset  # noqa: E402
import run  # noqa: E402
from grad_precision import gradient  # noqa: E402


def logits_in_float32(self, x, kv_cache=None):
    B, T, C = x.size()
    with torch.autocast("cpu", enabled=False):
        xf = x.float()
        k = attention._split_heads(self.key(xf), self.n_head)
        q = attention._split_heads(self.query(xf), self.n_head)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf")), dim=-1)
    v = attention._split_heads(self.value(x), self.n_head)
    y = self.attn_drop(att.to(torch.bfloat16)) @ v
    return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("wiki")
    argp.add_argument("params", nargs="+")
    args = argp.parse_args()
    args.variant, args.plain, args.bottleneck_dim = "vanilla", False, 32
    with open(args.wiki, encoding="utf-8") as f:
        ds = dataset.CharCorruptionDataset(f.read(), 128)
    random.seed(0)  # the rows of grad_precision.py
    rows = [ds[i % len(ds)] for i in range(128)]
    x, y = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    cos = F.cosine_similarity
    plain = attention.CausalSelfAttention.forward
    print("| params | all-bf16 cosine | bf16 with q, k, q k^T and softmax in float32 |\n| --- | --- | --- |")
    for path in args.params:
        state = torch.load(path, map_location="cpu", weights_only=False)
        gpt = run.build_model(args, ds.vocab_size)
        gpt.load_state_dict(state.get("model", state))
        gpt.eval()
        _, exact = gradient(gpt.double(), x, y)
        gpt.float()
        attention.CausalSelfAttention.forward = plain
        bf16 = cos(gradient(gpt, x, y, True)[1], exact, dim=0).item()
        attention.CausalSelfAttention.forward = logits_in_float32
        mixed = cos(gradient(gpt, x, y, True)[1], exact, dim=0).item()
        attention.CausalSelfAttention.forward = plain
        print(f"| {os.path.basename(path)} | {bf16:.3f} | {mixed:.3f} |", flush=True)


if __name__ == "__main__":
    main()
