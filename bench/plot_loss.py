"""
Loss curves from the TensorBoard logs that run.py writes (expt/<function>/<run>).

  python bench/plot_loss.py EXPT_DIR OUT.png [--smooth 23] [--every K]

Plots train/loss (moving average over --smooth steps, default one pretraining
epoch of 23 steps) and train/lr of every run found under EXPT_DIR, and prints a
one-line summary of each: steps, first, lowest and last smoothed loss. With
--every K it also prints the mean loss of each block of K steps (K = 115: five
pretraining epochs), for tables.
Needs matplotlib (a dev extra).
"""

import argparse
import glob
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir, tag):
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return [], []
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def block_means(values, n):
    """Mean of each block of n values (the last block may be shorter)."""
    return [sum(values[i:i + n]) / len(values[i:i + n]) for i in range(0, len(values), n)]


def moving_average(values, n):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - n] if i >= n else 0.0)
        out.append(total / min(i + 1, n))
    return out


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("expt_dir")
    argp.add_argument("out_png")
    argp.add_argument("--smooth", type=int, default=23)
    argp.add_argument("--every", type=int, default=0, help="print the mean loss of each block of this many steps")
    args = argp.parse_args()
    import matplotlib  # here, not at the top: scalars() and block_means() serve machines without it (a bare GPU)
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt
    runs = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(args.expt_dir, "**", "events.out.tfevents.*"),
                                                         recursive=True)})
    if not runs:
        raise SystemExit(f"plot_loss.py: error: no TensorBoard logs under {args.expt_dir}")
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 3.2 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs):
        steps, loss = scalars(run, "train/loss")
        lr_steps, lr = scalars(run, "train/lr")
        smooth = moving_average(loss, args.smooth)
        name = os.path.relpath(run, args.expt_dir)
        print(f"{name}: {len(steps)} steps, smoothed loss first {smooth[0]:.3f}, lowest {min(smooth):.3f}, "
              f"last {smooth[-1]:.3f}")
        if args.every:
            means = " ".join(f"{m:.3f}" for m in block_means(loss, args.every))
            print(f"  mean loss per block of {args.every} steps: {means}")
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.5)
        ax.plot(steps, smooth, color="tab:blue", label=f"train/loss (mean of {args.smooth} steps)")
        ax.set_ylabel("loss")
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
        ax2 = ax.twinx()
        ax2.plot(lr_steps, lr, color="tab:orange", linewidth=1, label="train/lr")
        ax2.set_ylabel("lr")
        lines = ax.get_lines()[1:] + ax2.get_lines()
        ax.legend(lines, [l.get_label() for l in lines], loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out_png, dpi=110)
    print(f"wrote {args.out_png}")


if __name__ == "__main__":
    main()
