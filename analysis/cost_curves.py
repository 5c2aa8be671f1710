"""
Handout question 2(g)(ii): what does the Perceiver's bottleneck save? Compute cost
of the vanilla model against the Perceiver, as formulas and as measured
forward+backward time and activation memory over the sequence length l.

Multiply-adds of one forward pass of one sequence, read off src/model.py, with
L layers, length l, bottleneck m, width d (the head count does not matter:
the heads split d), and V the vocabulary:

  vanilla block (length l): query, key, value, proj  4 l d^2
                            scores q k^T, then @ v   2 l^2 d  (all l^2 are computed, then masked)
                            MLP d -> 4d -> d         8 l d^2
  vanilla:    L (12 l d^2 + 2 l^2 d)                      + l d V
  perceiver:  down block (C, m rows, reads x):  key, value on x 2 l d^2; proj and MLP
                                                on the m rows 9 m d^2; scores 2 m l d;
                                                the query of C, m d^2, once per batch
                                                (C is the same for every sequence)
              L-2 middle blocks on m rows:      (L-2)(12 m d^2 + 2 m^2 d)
              up block (x reads the m rows):    key, value on m 2 m d^2; query, proj,
                                                MLP on x 10 l d^2; scores 2 l m d
            = 12 l d^2 + 4 l m d + (L-2)(12 m d^2 + 2 m^2 d) + 11 m d^2 + l d V
              (+ m d^2 per batch)

torch's FlopCounterMode counts exactly these on a tiny model (tests/test_analysis.py).

In orders: vanilla L (l^2 d + l d^2); Perceiver (l m d + l d^2) for the down and up
blocks plus (L-2)(m^2 d + m d^2) in the middle. With m fixed the Perceiver is
linear in l, and its l d^2 term is one block's instead of L blocks'. The vanilla
l^2 d term overtakes 12 l d^2 only for l > 6 d (1,536 at d = 256), so at the
lengths measured here its cost grows between linearly and quadratically; the
slope 2 is the limit. Backward costs about twice the forward, so the same
shape holds for a training step. The l^2 softmax, mask and dropout passes are
few flops but memory-bound, and add to the quadratic part of the time on CPU.

  python analysis/cost_curves.py [--lengths 64 128 256 512 1024] [--device cpu] [--out results/analysis/cost]

Writes cost.png (time and memory against l, log-log) and cost_curves.md to --out.
"""

import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
import model  # noqa: E402


def macs(variant, L, l, d, m=None, V=0, B=1):
    """Multiply-adds of one forward pass of a batch of B sequences (the formulas of the docstring)."""
    if variant == "vanilla":
        return B * (L * (12 * l * d * d + 2 * l * l * d) + l * d * V)
    per_sequence = 12 * l * d * d + 4 * l * m * d + (L - 2) * (12 * m * d * d + 2 * m * m * d) + 11 * m * d * d
    return B * (per_sequence + l * d * V) + m * d * d


def slope(xs, ys):
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def measure(gpt, idx, reps, device):
    """Median seconds of a forward+backward step, and the bytes of memory the step's activations take."""
    def step():
        _, loss = gpt(idx, idx)
        loss.backward()
        gpt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: allocator, kernels, lazy inits
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)

    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return statistics.median(times), torch.cuda.max_memory_allocated() - base
    # CPU has no peak counter, so we count what the forward pass saves for backward: the
    # activation memory that grows with l and is the training step's peak beyond params and
    # grads. saved_tensors_hooks sees each saved tensor; we count each storage once (views
    # share one) and skip parameters and buffers (the masks), which are there at any length.
    # Transient temporaries that are freed before backward are not counted.
    fixed = {t.untyped_storage().data_ptr() for t in list(gpt.parameters()) + list(gpt.buffers())}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in fixed:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = gpt(idx, idx)
    del loss
    return statistics.median(times), sum(saved.values())


def main(argv=None):
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    argp.add_argument("--bottleneck_dim", type=int, default=64, help="the Perceiver's m (at most the shortest length)")
    argp.add_argument("--batch", type=int, default=4)
    argp.add_argument("--reps", type=int, default=3, help="timed steps per point, after one warm-up")
    argp.add_argument("--vocab", type=int, default=256, help="vocabulary size (the course's wiki.txt has 256)")
    argp.add_argument("--device", default="cpu")
    argp.add_argument("--seed", type=int, default=0)
    argp.add_argument("--out", default="results/analysis/cost")
    args = argp.parse_args(argv)
    if args.bottleneck_dim > min(args.lengths):
        argp.error(f"--bottleneck_dim {args.bottleneck_dim} is longer than the shortest length {min(args.lengths)}")
    os.makedirs(args.out, exist_ok=True)
    device = torch.device(args.device)
    L, d, m = 4, 256, args.bottleneck_dim

    rows = {"vanilla": [], "perceiver": []}  # (l, seconds, bytes)
    for l in args.lengths:
        for variant in rows:
            torch.manual_seed(args.seed)
            extra = dict(perceiver=True, bottleneck_dim=m) if variant == "perceiver" else {}
            gpt = model.GPT(model.GPTConfig(args.vocab, l, n_layer=L, n_head=8, n_embd=d, **extra)).to(device)
            gpt.train()  # the default path (not GPTConfig.plain) and dropout, as in training
            idx = torch.randint(1, args.vocab, (args.batch, l), device=device)
            seconds, nbytes = measure(gpt, idx, args.reps, device)
            rows[variant].append((l, seconds, nbytes))
            print(f"{variant:9s} l={l:5d}  {1000 * seconds:8.1f} ms  {nbytes / 2**20:8.1f} MiB", flush=True)

    predicted = {v: [macs(v, L, l, d, m, args.vocab, args.batch) for l in args.lengths] for v in rows}
    plot(args.out, rows, predicted, args.device)

    upper = args.lengths[len(args.lengths) // 2:] if len(args.lengths) > 2 else args.lengths
    memory = "peak allocated during the step, minus what was allocated before it" if device.type == "cuda" else \
        "bytes of the tensors the forward pass saves for backward (parameters and masks excluded)"
    lines = ["# Compute cost: vanilla against Perceiver (handout question 2(g)(ii))", "",
             f"`python analysis/cost_curves.py --lengths {' '.join(map(str, args.lengths))} --bottleneck_dim {m} "
             f"--batch {args.batch} --reps {args.reps} --device {args.device} --out {args.out}`", "",
             f"L = {L}, d = {d}, 8 heads, m = {m}, batch {args.batch}, vocabulary {args.vocab}, train mode "
             f"(dropout on), device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s). "
             f"Time: median of {args.reps} forward+backward steps after a warm-up. Memory: {memory}.", "",
             "Multiply-adds of one forward pass of one sequence (derivation in the script's docstring):", "",
             "- vanilla: L (12 l d^2 + 2 l^2 d) + l d V, of order L (l^2 d + l d^2); "
             "the l^2 d term leads once l > 6d",
             "- perceiver: 12 l d^2 + 4 l m d + (L-2)(12 m d^2 + 2 m^2 d) + 11 m d^2 + l d V (+ m d^2 per batch), "
             "of order l m d + l d^2 (down and up blocks) + (L-2)(m^2 d + m d^2); linear in l for fixed m", "",
             "| l | vanilla ms | perceiver ms | vanilla MiB | perceiver MiB | vanilla / perceiver time | "
             "predicted ratio (multiply-adds) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (l, tv, mv), (_, tp, mp) in zip(rows["vanilla"], rows["perceiver"]):
        ratio = macs("vanilla", L, l, d, m, args.vocab) / macs("perceiver", L, l, d, m, args.vocab)  # B=1
        lines.append(f"| {l} | {1000 * tv:.1f} | {1000 * tp:.1f} | {mv / 2**20:.1f} | {mp / 2**20:.1f} | "
                     f"{tv / tp:.2f} | {ratio:.2f} |")
    lines += ["", f"Slopes of log(cost) against log(l) over l = {', '.join(map(str, upper))}:", "",
              "| | time, measured | memory, measured | multiply-adds, predicted here | predicted, l -> infinity |",
              "| --- | --- | --- | --- | --- |"]
    for variant, limit in (("vanilla", 2), ("perceiver", 1)):
        pts = [r for r in rows[variant] if r[0] in upper]
        pred = slope(upper, [macs(variant, L, l, d, m, args.vocab, args.batch) for l in upper])
        lines.append(f"| {variant} | {slope(upper, [r[1] for r in pts]):.2f} | {slope(upper, [r[2] for r in pts]):.2f}"
                     f" | {pred:.2f} | {limit} |")
    with open(os.path.join(args.out, "cost_curves.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def plot(out, rows, predicted, device):
    import matplotlib
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for variant, pts in rows.items():
        ls = [r[0] for r in pts]
        line, = ax[0].loglog(ls, [1000 * r[1] for r in pts], "o-", base=2, label=variant)
        # the multiply-add count, scaled to meet the measured time at the longest l: its slope is the prediction
        scale = 1000 * pts[-1][1] / predicted[variant][-1]
        ax[0].loglog(ls, [scale * p for p in predicted[variant]], "--", base=2, color=line.get_color(),
                     label=f"{variant}, multiply-adds (scaled)")
        ax[1].loglog(ls, [r[2] / 2**20 for r in pts], "o-", base=2, label=variant)
    ax[0].set(xlabel="sequence length l", ylabel="ms per forward+backward", title=f"time ({device})")
    ax[1].set(xlabel="sequence length l", ylabel="MiB", title="activation memory")
    for a in ax:
        a.legend()
        a.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cost.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
