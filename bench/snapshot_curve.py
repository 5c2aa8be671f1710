"""
Dev accuracy along a pretraining run: for each saved checkpoint (a copy of
<writing_params_path>.ckpt taken at some epoch), take its model, finetune it the
handout's way (10 epochs) and evaluate on dev. Shows when in the handout's
schedule the model starts to store facts that finetuning can read out, which a
final accuracy alone cannot.

  python bench/snapshot_curve.py DATA OUT CKPT [CKPT ...] [--variant perceiver --bottleneck_dim 64]

Each CKPT is a trainer checkpoint (its epoch is read from it). Writes into OUT,
per checkpoint, the params, the finetuned params and the dev predictions, then
prints a markdown table: epoch, pretraining step, dev accuracy.
"""

import argparse
import os
import subprocess
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "src"))
import checkpoint  # noqa: E402


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("data", help="folder with wiki.txt, birth_places_train.tsv, birth_dev.tsv")
    argp.add_argument("out")
    argp.add_argument("ckpts", nargs="+")
    argp.add_argument("--variant", default="vanilla", choices=["vanilla", "perceiver", "rope"])
    argp.add_argument("--bottleneck_dim", type=int, default=32)
    args = argp.parse_args()
    os.makedirs(args.out, exist_ok=True)
    model = ["--bottleneck_dim", str(args.bottleneck_dim)] if args.variant == "perceiver" else []

    def run(*argv):
        cmd = [sys.executable, os.path.join(here, "..", "src", "run.py"), *argv, *model]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {done.stderr.strip().splitlines()[-1]}")
        return done.stdout

    rows = []
    for ckpt in args.ckpts:
        try:
            state = checkpoint.load(ckpt)
        except checkpoint.CheckpointError as e:
            sys.exit(f"{ckpt}: {e}")
        tag = os.path.join(args.out, f"ep{state['epoch']}")
        torch.save(state["model"], tag + ".pretrain.params")
        wiki = os.path.join(args.data, "wiki.txt")
        run("finetune", args.variant, wiki, "--reading_params_path", tag + ".pretrain.params",
            "--writing_params_path", tag + ".finetune.params",
            "--finetune_corpus_path", os.path.join(args.data, "birth_places_train.tsv"))
        out = run("evaluate", args.variant, wiki, "--reading_params_path", tag + ".finetune.params",
                  "--eval_corpus_path", os.path.join(args.data, "birth_dev.tsv"),
                  "--outputs_path", tag + ".dev.predictions")
        correct = next(line for line in out.splitlines() if line.startswith("Correct:"))
        rows.append((state["epoch"], state["step"], correct))
        print(f"epoch {state['epoch']}: {correct}", flush=True)

    print("\n| pretraining epochs done | steps | dev after finetuning (10 epochs) |\n| --- | --- | --- |")
    for epoch, step, correct in sorted(rows):
        print(f"| {epoch} | {step} | {correct} |")


if __name__ == "__main__":
    main()
