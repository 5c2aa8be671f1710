"""
The course way against this project's default, side by side in one run.

  python bench/bench_speed.py --data_dir ../shared/data [--reps 3] [--cli] [--device cuda]

The course way: explicit attention with nn.Dropout, float32, full-length rows,
torch's default AdamW, and evaluation one prompt at a time. The default: what
run.py does without --plain, timed in float32 and, where the CPU has bf16
arithmetic of its own, in bf16, which is then run.py's default (see run.py --help);
on a GPU, in run.py's default precision there (bf16, or float32 without it).
The ways take turns so that machine noise hits all alike, each timed step
after an untimed one of its own (see side_by_side); the table gives medians
and their ratios to the course way.
With --cli it also times whole run.py commands (start-up included): pretraining
epochs (--cli_epochs: 1 on CPU, 30 on a GPU, where an epoch takes a second) and
the evaluation of the dev questions, --plain against default.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
import dataset  # noqa: E402
import hardware  # noqa: E402
import run  # noqa: E402
import trainer  # noqa: E402
import utils  # noqa: E402


def handout_model(vocab_size, perceiver, fast=True):
    """The handout's model (the Perceiver with m = 64), built by run.py."""
    args = argparse.Namespace(variant="perceiver" if perceiver else "vanilla", bottleneck_dim=64, plain=not fast)
    return run.build_model(args, vocab_size)


def make_step(perceiver, fast, vocab_size, x, y, dtype="float32", device="cpu"):
    gpt = handout_model(vocab_size, perceiver, fast).to(device)
    x, y = x.to(device), y.to(device)
    tconf = trainer.TrainerConfig(learning_rate=6e-3, dtype=dtype, device=device,
                                  sub_batches=trainer.sub_batches_for(len(x), dtype, device) if fast else 1)
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


def side_by_side(reps, *ways, device="cpu"):
    """
    Median time of each way over reps timed calls. The ways take turns, so that
    machine noise hits all alike, and every timed call follows an untimed call
    of the same way: the first step after another way's pays for what that way
    left behind (allocator, caches). Timed straight after the default's step,
    the course way's vanilla pretraining step took 4.6 s; after one of its own,
    3.4-3.8 s, as in a process of its own (3.3-3.9 s; 2 threads).
    """
    def sync():  # a GPU runs behind the host: time until its queue is empty
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    times = [[] for _ in ways]
    for _ in range(reps):
        for f, t in zip(ways, times):
            f()
            sync()
            start = time.perf_counter()
            f()
            sync()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def decode_eval(data_dir, pretrain, perceiver, device="cpu", questions=None):
    gpt = handout_model(pretrain.vocab_size, perceiver).to(device).eval()
    rows = utils.read_questions(os.path.join(data_dir, "birth_dev.tsv"))[:questions]
    mask_id = pretrain.stoi[pretrain.MASK_CHAR]
    prompts = [dataset.encode(pretrain.stoi, q) + [mask_id] for _, q, _ in rows]

    def course():
        for p in prompts:
            utils.sample(gpt, torch.tensor([p], device=device), 32, sample=False)

    def default():
        utils.predict_places(gpt, prompts, pretrain.itos, mask_id)
    return course, default, len(prompts)


def cli(args, cwd):
    """Wall time of a run.py command, and the training steps per second it reports (or None)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "src", "run.py")] + args, check=True,
                         capture_output=True, cwd=cwd, text=True).stdout
    rate = re.search(r"([0-9.]+) steps/s", out)
    return time.perf_counter() - start, float(rate.group(1)) if rate else None


def fmt(seconds):
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("--data_dir", default=os.environ.get("A5_DATA_DIR", os.path.join(ROOT, "data")))
    argp.add_argument("--reps", type=int, default=3)
    argp.add_argument("--device", default="cpu", help="cpu or cuda")
    argp.add_argument("--cli", action="store_true", help="also time whole run.py commands")
    argp.add_argument("--cli_epochs", type=int, default=None, help="pretraining epochs of --cli (1 on CPU, 30 on GPU)")
    argp.add_argument("--rows", type=int, default=None, help="rows of a step (default: the handout's 128 and 256)")
    argp.add_argument("--questions", type=int, default=None, help="dev questions to decode (default: all)")
    args = argp.parse_args()
    torch.manual_seed(0)
    device = args.device
    D = os.path.abspath(args.data_dir)  # the --cli commands run in a temporary folder
    with open(os.path.join(D, "wiki.txt"), encoding="utf-8") as f:
        pretrain = dataset.CharCorruptionDataset(f.read(), 128)
    with open(os.path.join(D, "birth_places_train.tsv"), encoding="utf-8") as f:
        names = dataset.NameDataset(pretrain, f.read())
    loader = lambda ds, bs: next(iter(torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True)))
    x_pt, y_pt = loader(pretrain, args.rows or 128)
    x_ft, y_ft = loader(names, args.rows or 256)

    fast_dtype = hardware.pick_dtype("auto", device)  # run.py's default precision here
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU capability " \
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, data {D}\n")
    print(f"run.py's default here: {fast_dtype}\n")
    print(f"| what | course way | default in float32 | speed-up | default in {fast_dtype} | speed-up |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for what, perceiver, x, y in ((f"pretraining step, vanilla ({len(x_pt)} rows)", False, x_pt, y_pt),
                                  ("pretraining step, perceiver m=64", True, x_pt, y_pt),
                                  (f"finetuning step, vanilla ({len(x_ft)} rows)", False, x_ft, y_ft),
                                  ("finetuning step, perceiver m=64", True, x_ft, y_ft)):
        ways = [make_step(perceiver, fast, pretrain.vocab_size, x, y, device=device) for fast in (False, True)]
        if fast_dtype != "float32":
            ways.append(make_step(perceiver, True, pretrain.vocab_size, x, y, fast_dtype, device))
        a, b, *c = side_by_side(args.reps, *ways, device=device)
        cells = f"{fmt(c[0])} | {a / c[0]:.1f}x" if c else "(the default is float32 here) |"
        print(f"| {what} | {fmt(a)} | {fmt(b)} | {a / b:.1f}x | {cells} |", flush=True)
    for variant in ("vanilla", "perceiver"):
        course, default, n = decode_eval(D, pretrain, variant == "perceiver", device, args.questions)
        a, b = side_by_side(1, course, default, device=device)
        print(f"| greedy decoding of {n} dev questions, {variant} (untrained model, all 32 characters) "
              f"| {fmt(a)} | {fmt(b)} | {a / b:.1f}x | | |", flush=True)

    if args.cli:
        import tempfile
        tmp = tempfile.mkdtemp()
        epochs = args.cli_epochs or (1 if device == "cpu" else 30)
        on = ["--device", device]
        for variant in ("vanilla", "perceiver"):
            pt = ["pretrain", variant, f"{D}/wiki.txt", "--max_epochs", str(epochs), "--bottleneck_dim", "64",
                  "--writing_params_path"] + [f"{variant}.params"] + on
            (a, ra), (b, rb) = cli(pt + ["--plain"], tmp), cli(pt, tmp)
            os.replace(os.path.join(tmp, f"{variant}.params"), os.path.join(tmp, f"{variant}.trained.params"))
            course, default = f"{fmt(a)} ({ra:.2f} steps/s)", f"{fmt(b)} ({rb:.2f} steps/s) | {rb / ra:.1f}x"
            cells = f"{default} | | |" if fast_dtype == "float32" else f" | | {default} |"
            print(f"| `run.py pretrain {variant} --max_epochs {epochs}` (whole command; speed-up in steps/s) "
                  f"| {course} | {cells}", flush=True)
        ev = ["evaluate", "vanilla", f"{D}/wiki.txt", "--reading_params_path", "vanilla.trained.params",
              "--eval_corpus_path", f"{D}/birth_dev.tsv", "--outputs_path", "dev.predictions"] + on
        (a, _), (b, _) = cli(ev + ["--plain"], tmp), cli(ev, tmp)
        print(f"| `run.py evaluate vanilla` on the dev set (whole command) | {fmt(a)} | {fmt(b)} | {a / b:.1f}x | | |")

if __name__ == "__main__":
    main()
