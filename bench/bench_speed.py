"""
The course way against this project's default, side by side in one run.

  python bench/bench_speed.py --data_dir ../shared/data [--reps 3] [--cli]

The course way: explicit attention with nn.Dropout, float32, full-length rows,
torch's default AdamW, and evaluation one prompt at a time. The default: what
run.py does without --plain, timed in float32 and, where the CPU has bf16
arithmetic of its own, in bf16, which is then run.py's default (see run.py --help).
The ways take turns so that machine noise hits all alike, each timed step
after an untimed one of its own (see side_by_side); the table gives medians
and their ratios to the course way.
With --cli it also times whole run.py commands (start-up included): one
pretraining epoch and the evaluation of the dev questions, --plain against default.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
import dataset  # noqa: E402
import run  # noqa: E402
import trainer  # noqa: E402
import utils  # noqa: E402


def handout_model(vocab_size, perceiver, fast=True):
    """The handout's model (the Perceiver with m = 64), built by run.py."""
    args = argparse.Namespace(variant="perceiver" if perceiver else "vanilla", bottleneck_dim=64, plain=not fast)
    return run.build_model(args, vocab_size)


def make_step(perceiver, fast, vocab_size, x, y, dtype="float32"):
    gpt = handout_model(vocab_size, perceiver, fast)
    tconf = trainer.TrainerConfig(learning_rate=6e-3, dtype=dtype,
                                  sub_batches=trainer.sub_batches_for(len(x), dtype) if fast else 1)
    t = trainer.Trainer(gpt, None, None, tconf)
    if not fast:  # the course's optimizer: torch's default (foreach) AdamW
        t.optimizer = torch.optim.AdamW(t.optimizer.param_groups, lr=6e-3, betas=(0.9, 0.95))

    def step():
        gpt.train()
        t.optimizer.zero_grad(set_to_none=True)
        t.forward_backward(x, y)
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        t.optimizer.step()
    return step


def side_by_side(reps, *ways):
    """
    Median time of each way over reps timed calls. The ways take turns, so that
    machine noise hits all alike, and every timed call follows an untimed call
    of the same way: the first step after another way's pays for what that way
    left behind (allocator, caches). Timed straight after the default's step,
    the course way's vanilla pretraining step took 4.6 s; after one of its own,
    3.4-3.8 s, as in a process of its own (3.3-3.9 s; 2 threads).
    """
    times = [[] for _ in ways]
    for _ in range(reps):
        for f, t in zip(ways, times):
            f()
            start = time.perf_counter()
            f()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def decode_eval(data_dir, pretrain, perceiver):
    gpt = handout_model(pretrain.vocab_size, perceiver).eval()
    rows = utils.read_questions(os.path.join(data_dir, "birth_dev.tsv"))
    mask_id = pretrain.stoi[pretrain.MASK_CHAR]
    prompts = [dataset.encode(pretrain.stoi, q) + [mask_id] for _, q, _ in rows]

    def course():
        for p in prompts:
            utils.sample(gpt, torch.tensor([p]), 32, sample=False)

    def default():
        utils.predict_places(gpt, prompts, pretrain.itos, mask_id)
    return course, default, len(prompts)


def cli(args, cwd):
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "src", "run.py")] + args, check=True,
                   capture_output=True, cwd=cwd)
    return time.perf_counter() - start


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("--data_dir", default=os.environ.get("A5_DATA_DIR", os.path.join(ROOT, "data")))
    argp.add_argument("--reps", type=int, default=3)
    argp.add_argument("--cli", action="store_true", help="also time whole run.py commands")
    args = argp.parse_args()
    torch.manual_seed(0)
    D = os.path.abspath(args.data_dir)  # the --cli commands run in a temporary folder
    with open(os.path.join(D, "wiki.txt"), encoding="utf-8") as f:
        pretrain = dataset.CharCorruptionDataset(f.read(), 128)
    with open(os.path.join(D, "birth_places_train.tsv"), encoding="utf-8") as f:
        names = dataset.NameDataset(pretrain, f.read())
    loader = lambda ds, bs: next(iter(torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True)))
    x_pt, y_pt = loader(pretrain, 128)
    x_ft, y_ft = loader(names, 256)

    bf16 = run.native_dtype("bfloat16", "cpu")
    default_dtype = run.pick_dtype(argparse.Namespace(plain=False, dtype="auto"), "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, data {D}\n")
    print(f"run.py's default here: {default_dtype}\n")
    print("| what | course way | default in float32 | speed-up | default in bfloat16 | speed-up |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for name, perceiver, x, y in (("pretraining step, vanilla (128 rows)", False, x_pt, y_pt),
                                  ("pretraining step, perceiver m=64", True, x_pt, y_pt),
                                  ("finetuning step, vanilla (256 rows)", False, x_ft, y_ft),
                                  ("finetuning step, perceiver m=64", True, x_ft, y_ft)):
        ways = [make_step(perceiver, fast, pretrain.vocab_size, x, y) for fast in (False, True)]
        if bf16:
            ways.append(make_step(perceiver, True, pretrain.vocab_size, x, y, "bfloat16"))
        a, b, *c = side_by_side(args.reps, *ways)
        bf16_cells = f"{c[0]:.2f} s | {a / c[0]:.1f}x" if bf16 else "not native on this CPU |"
        print(f"| {name} | {a:.2f} s | {b:.2f} s | {a / b:.1f}x | {bf16_cells} |", flush=True)
    for variant in ("vanilla", "perceiver"):
        course, default, n = decode_eval(D, pretrain, variant == "perceiver")
        a, b = side_by_side(1, course, default)
        print(f"| greedy decoding of {n} dev questions, {variant} (untrained model, all 32 characters) "
              f"| {a:.1f} s | {b:.2f} s | {a / b:.1f}x | | |", flush=True)

    if args.cli:
        import tempfile
        tmp = tempfile.mkdtemp()
        pt = ["pretrain", "vanilla", f"{D}/wiki.txt", "--max_epochs", "1", "--writing_params_path"]
        a, b = cli(pt + ["p.params", "--plain"], tmp), cli(pt + ["q.params"], tmp)
        cells = f"{b:.1f} s | {a / b:.1f}x | | |" if default_dtype == "float32" else f" | | {b:.1f} s | {a / b:.1f}x |"
        print(f"| `run.py pretrain vanilla --max_epochs 1` (whole command, {default_dtype}) | {a:.1f} s | {cells}")
        ev = ["evaluate", "vanilla", f"{D}/wiki.txt", "--reading_params_path", "q.params",
              "--eval_corpus_path", f"{D}/birth_dev.tsv", "--outputs_path", "dev.predictions"]
        a, b = cli(ev + ["--plain"], tmp), cli(ev, tmp)
        print(f"| `run.py evaluate vanilla` on the dev set (whole command) | {a:.1f} s | {b:.1f} s | {a / b:.1f}x | | |")


if __name__ == "__main__":
    main()
