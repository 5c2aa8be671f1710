"""
A run's per-epoch training loss beside the reference curves (../shared/reference:
the handout's full pipeline by a course-faithful trainer on a GPU).

  python bench/reference_curve.py RUN_DIR OUT [--steps_per_epoch 23] --reference CSV [CSV ...]

RUN_DIR is a TensorBoard run folder that run.py wrote (expt/pretrain/<name>).
Writes OUT.csv in the reference's columns (phase, epoch, mean_loss,
lr_after_epoch; complete epochs only) and OUT.png with every curve over the
run's epochs, and prints the losses at epochs 10, 20, 30, ... side by side.
A pretraining epoch of wiki.txt is 23 steps of 128 rows (2,938 documents).
OUT.png needs matplotlib (a dev extra); without it (a bare GPU machine) the
CSV and the table are still written.
"""

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_loss import block_means, scalars  # noqa: E402


def per_epoch(run_dir, steps_per_epoch):
    """[(epoch, mean loss, lr after the epoch's last step)] of the run's complete epochs."""
    _, loss = scalars(run_dir, "train/loss")
    _, lr = scalars(run_dir, "train/lr")
    if not loss:
        raise SystemExit(f"reference_curve.py: error: {run_dir}: no train/loss scalars")
    return epoch_rows(loss, lr, steps_per_epoch)


def epoch_rows(loss, lr, steps_per_epoch):
    """[(epoch, mean loss, lr after the epoch's last step)] of the complete epochs of per-step loss and lr."""
    complete = len(loss) // steps_per_epoch
    means = block_means(loss[:complete * steps_per_epoch], steps_per_epoch)
    return [(e + 1, m, lr[(e + 1) * steps_per_epoch - 1]) for e, m in enumerate(means)]


def write_csv(rows, path):
    """rows (epoch_rows) in the references' columns."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "epoch", "mean_loss", "lr_after_epoch"])
        w.writerows(["pretrain", e, f"{l:.4f}", f"{lr:.2e}"] for e, l, lr in rows)


def read_reference(path):
    """{epoch: mean loss} of the pretraining rows of a reference CSV."""
    with open(path, newline="") as f:
        return {int(r["epoch"]): float(r["mean_loss"]) for r in csv.DictReader(f) if r["phase"] == "pretrain"}


def side_by_side(curves, last):
    """Markdown rows of curves ({name: {epoch: loss}}) at epochs 10, 20, ... and last; blank where one has none."""
    header = ["epoch"] + list(curves)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for e in list(range(10, last + 1, 10)) + ([last] if last % 10 else []):
        cells = [f"{c[e]:.3f}" if e in c else "" for c in curves.values()]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return lines


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("run_dir")
    argp.add_argument("out", help="OUT.csv and OUT.png are written")
    argp.add_argument("--steps_per_epoch", type=int, default=23)
    argp.add_argument("--reference", nargs="+", default=[], help="reference CSVs to draw beside the run")
    argp.add_argument("--label", default="this run")
    args = argp.parse_args()
    rows = per_epoch(args.run_dir, args.steps_per_epoch)
    if not rows:
        raise SystemExit(f"reference_curve.py: error: {args.run_dir}: not one complete epoch of "
                         f"{args.steps_per_epoch} steps")
    write_csv(rows, args.out + ".csv")
    refs = {os.path.splitext(os.path.basename(p))[0]: read_reference(p) for p in args.reference}
    plotted = plot(rows, refs, args.label, args.out + ".png")
    print("\n".join(side_by_side({args.label: {e: l for e, l, _ in rows}, **refs}, rows[-1][0])))
    print(f"wrote {args.out}.csv" + (f" and {args.out}.png" if plotted else " (no matplotlib here: no .png)"))


def plot(rows, refs, label, path):
    """The run's curve over the references' at the same epochs, into path; False where matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # no screen needed
    import matplotlib.pyplot as plt
    last = rows[-1][0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ref in refs.items():
        epochs = [e for e in sorted(ref) if e <= last]
        ax.plot(epochs, [ref[e] for e in epochs], linewidth=1, label=name)
    ax.plot([e for e, _, _ in rows], [l for _, l, _ in rows], color="black", linewidth=2, label=label)
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


if __name__ == "__main__":
    main()
