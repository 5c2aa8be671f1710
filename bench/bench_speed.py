"""
`--plain` (the course's computation) against this project's default, side by side in one run.

  python bench/bench_speed.py --data_dir ../shared/data [--reps 3] [--cli] [--device cuda] [--compile]

--plain: explicit attention with nn.Dropout, float32, full-length rows,
torch's default AdamW, and evaluation one prompt at a time. The default: what
run.py does without --plain, timed in float32 and, where the CPU has bf16
arithmetic of its own, in bf16, which is then run.py's default (see run.py --help);
on a GPU, in run.py's default precision there (float32).
The ways take turns so that machine noise hits all alike, each timed step
after an untimed one of its own (see side_by_side); the table gives medians
and their ratios to --plain.
With --cli it also times whole run.py commands (start-up included): pretraining
epochs (--cli_epochs: 1 on CPU, 30 on a GPU, where an epoch takes a second) and
the evaluation of the dev questions, --plain against default.
With --compile it also times run.py --compile (torch.compile, whole static
batches, CUDA graphs on a GPU) against the eager default, in the default
precision: the pretraining steps, whether 3 steps on one batch without dropout
give the eager losses, and with --cli the whole pretraining command (its
steps/s after the first epoch, which holds the compiling, and its per-epoch
loss beside the eager run's). The lines after the table sum it up
(bench/gpu_check.sh reads them).
"""

import argparse
import glob
import math
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
from decoding import predict_places  # noqa: E402
from inputs import encode, read_questions  # noqa: E402


def handout_model(vocab_size, perceiver, plain=False, rope=False):
    """The handout's model (the Perceiver with m = 64; rope: the 2024 handout's), built by run.py."""
    variant = "perceiver" if perceiver else "rope" if rope else "vanilla"
    return run.build_model(argparse.Namespace(variant=variant, bottleneck_dim=64, plain=plain), vocab_size)


def make_trainer(perceiver, plain, vocab_size, dtype="float32", device="cpu", rows=128, compile=False, rope=False):
    """The handout's model and a trainer with run.py's speed settings: --plain's (plain), the default's,
    or the compiled default's (whole static batches)."""
    gpt = handout_model(vocab_size, perceiver, plain, rope).to(device)
    settings = hardware.speed_settings(device, dtype, rows, plain=plain, compile=compile)
    return gpt, trainer.Trainer(gpt, None, None, trainer.TrainerConfig(learning_rate=6e-3, device=device, **settings))


def make_step(perceiver, plain, vocab_size, x, y, dtype="float32", device="cpu", compile=False, rope=False):
    gpt, t = make_trainer(perceiver, plain, vocab_size, dtype, device, len(x), compile, rope)
    x, y = x.to(device), y.to(device)

    def step():
        gpt.train()
        t.train_step(x, y)  # the trainer's step: zero_grad, forward, backward, clip, AdamW, lr
    return step


def compiled_losses(vocab_size, x, y, dtype, device, steps=3):
    """
    The losses of `steps` optimizer steps on one batch, eager and compiled, from the
    same initial params with dropout off (the compiled graph draws its dropout masks
    from another stream): equal up to the rounding of the precision.
    """
    runs = []
    for compile in (False, True):
        torch.manual_seed(0)
        gpt, t = make_trainer(False, False, vocab_size, dtype, device, len(x), compile)
        for m in gpt.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        gpt.train()
        runs.append([float(t.train_step(x.to(device), y.to(device))[0]) for _ in range(steps)])
    return runs


def side_by_side(reps, *ways, device="cpu"):
    """
    Median time of each way over reps timed calls. The ways take turns, so that
    machine noise hits all alike, and every timed call follows an untimed call
    of the same way: the first step after another way's pays for what that way
    left behind (allocator, caches). Timed straight after the default's step,
    --plain's vanilla pretraining step took 4.6 s; after one of its own,
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


def checkpoint_cost(pretrain, x, y, dtype, device, step_seconds, reps):
    """
    What a checkpoint (params and AdamW state, written atomically and fsynced: Trainer.save_checkpoint)
    costs a pretraining epoch of the default path: written after every epoch until 2026-12
    (--checkpoint_minutes 0), now at most every 5 minutes.
    """
    import tempfile
    gpt, t = make_trainer(False, False, pretrain.vocab_size, dtype, device, len(x))
    t.train_step(x.to(device), y.to(device))  # AdamW's state exists after a step
    with tempfile.TemporaryDirectory(dir=os.getcwd()) as tmp:  # the disk a run writes to, not a tmpfs
        t.config.ckpt_path = os.path.join(tmp, "p.params.ckpt")
        times = []
        for _ in range(max(reps, 2)):
            start = time.perf_counter()
            t.save_checkpoint()
            times.append(time.perf_counter() - start)
        size = os.path.getsize(t.config.ckpt_path) / 1e6
    save = statistics.median(times)
    epoch = step_seconds * math.ceil(len(pretrain) / len(x))
    return (f"checkpoint ({size:.0f} MB, fsynced) {fmt(save)}; a pretraining epoch ({math.ceil(len(pretrain) / len(x))} "
            f"default steps) {fmt(epoch)}: a checkpoint after every epoch (before) added {save / epoch:.1%} to each, "
            f"one every 5 minutes (now) adds {save / 300:.2%}")


def decode_eval(data_dir, pretrain, perceiver, device="cpu", questions=None):
    gpt = handout_model(pretrain.vocab_size, perceiver).to(device).eval()
    rows = read_questions(os.path.join(data_dir, "birth_dev.tsv"))[:questions]
    mask_id = pretrain.stoi[pretrain.MASK_CHAR]
    prompts = [encode(pretrain.stoi, q) + [mask_id] for _, q, _ in rows]

    def course():
        for p in prompts:
            utils.sample(gpt, torch.tensor([p], device=device), 32, sample=False)

    def default():
        predict_places(gpt, prompts, pretrain.itos, mask_id)
    return course, default, len(prompts)


def run_curve(run_dir, steps_per_epoch):
    """
    From a run's TensorBoard events: the mean train/loss of each complete epoch, and the
    steps/s after the first epoch (which holds start-up and compiling), or None. On a
    GPU the loss is logged in bursts of 25 steps written at once, so the rate is taken
    between the ends of bursts.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    if not os.path.isdir(run_dir):
        return [], None
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    if "train/loss" not in acc.Tags()["scalars"]:
        return [], None
    events = acc.Scalars("train/loss")
    losses = [e.value for e in events]
    epochs = [statistics.fmean(losses[i:i + steps_per_epoch])
              for i in range(0, len(losses) - steps_per_epoch + 1, steps_per_epoch)]
    ends = [(a.step, a.wall_time) for a, b in zip(events, events[1:] + [None])
            if b is None or b.wall_time - a.wall_time > 0.005]
    later = [(s, w) for s, w in ends if s >= steps_per_epoch - 1]
    if len(later) < 2 or later[-1][1] <= later[0][1]:
        return epochs, None
    return epochs, (later[-1][0] - later[0][0]) / (later[-1][1] - later[0][1])


def cli(args, cwd, steps_per_epoch=None):
    """
    Wall time of a run.py command, the training steps per second it reports (or None)
    and, for a training command given --tb_expt_name, run_curve's per-epoch losses and
    steps/s after the first epoch.
    """
    start = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "src", "run.py")] + args, capture_output=True,
                         cwd=cwd, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        raise RuntimeError(f"run.py {args[0]} exited {out.returncode}")
    rate = reported_rate(out.stdout)
    epochs, steady = [], None
    if steps_per_epoch and "--tb_expt_name" in args:
        name = args[args.index("--tb_expt_name") + 1]
        for run_dir in glob.glob(os.path.join(cwd, "expt", args[0], f"{name}_*")):
            epochs, steady = run_curve(run_dir, steps_per_epoch)
    return seconds, rate, epochs, steady


def reported_rate(stdout):
    """The steps/s of run.py's closing "trained ..." line (not the early one of its expected-time line), or None."""
    rate = re.search(r"^trained .* ([0-9.]+) steps/s", stdout, re.M)
    return float(rate.group(1)) if rate else None


def fmt(seconds):
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def rate_cell(seconds, rate, steady):
    after = f"; {steady:.2f} after epoch 1" if steady else ""
    return f"{fmt(seconds)} ({rate:.2f} steps/s{after})"


def failed(e):
    """A table cell for a way that raised: the bench goes on with the others."""
    return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"


def main(argv=None):
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("--data_dir", default=os.environ.get("A5_DATA_DIR", os.path.join(ROOT, "data")))
    argp.add_argument("--reps", type=int, default=3)
    argp.add_argument("--device", default="cpu", help="cpu or cuda")
    argp.add_argument("--cli", action="store_true", help="also time whole run.py commands")
    argp.add_argument("--cli_epochs", type=int, default=None, help="pretraining epochs of --cli (1 on CPU, 30 on GPU)")
    argp.add_argument("--compile", action="store_true",
                      help="also time the compiled default (run.py --compile) against the eager one")
    argp.add_argument("--rows", type=int, default=None, help="rows of a step (default: the handout's 128 and 256)")
    argp.add_argument("--questions", type=int, default=None,
                      help="dev questions to decode, also by --cli's evaluate (default: all)")
    args = argp.parse_args(argv)
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

    default_dtype = hardware.pick_dtype("auto", device)  # run.py's default precision here
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU capability " \
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, data {D}\n")
    print(f"run.py's default here: {default_dtype}\n")
    # the compiled columns are filled for the pretraining steps: each compile takes a while
    compiled_head = f" default compiled, {default_dtype} | speed-up | against eager |" if args.compile else ""
    blank = " | | |" if args.compile else ""
    # where float32 is the default, the third pair of columns has nothing of its own to time
    third = f"default in {default_dtype}" if default_dtype != "float32" else "bfloat16"
    print(f"| what | --plain | default in float32 | speed-up | {third} | speed-up |{compiled_head}\n"
          "| --- | --- | --- | --- | --- | --- |" + " --- | --- | --- |" * args.compile)
    short = []  # the lines after the table: the default against --plain, compiled against eager
    verdict = {}  # what decides whether --compile could be this device's default: faster, and the same losses
    for what, perceiver, x, y in ((f"pretraining step, vanilla ({len(x_pt)} rows)", False, x_pt, y_pt),
                                  ("pretraining step, perceiver m=64", True, x_pt, y_pt),
                                  (f"finetuning step, vanilla ({len(x_ft)} rows)", False, x_ft, y_ft),
                                  ("finetuning step, perceiver m=64", True, x_ft, y_ft)):
        ways = [make_step(perceiver, plain, pretrain.vocab_size, x, y, device=device) for plain in (True, False)]
        if default_dtype != "float32":
            ways.append(make_step(perceiver, False, pretrain.vocab_size, x, y, default_dtype, device))
        compiled = ""
        if args.compile and what.startswith("pretraining"):
            try:
                step = make_step(perceiver, False, pretrain.vocab_size, x, y, default_dtype, device, compile=True)
                for _ in range(3):  # compiles, then records the CUDA graphs, outside the timing (or fails here)
                    step()
                ways.append(step)
            except Exception as e:  # noqa: BLE001 (the other ways are still worth timing)
                compiled = f" {failed(e)} | | |"
        times = side_by_side(args.reps, *ways, device=device)
        a, b, eager = times[0], times[1], times[2 if default_dtype != "float32" else 1]
        cells = f"{fmt(times[2])} | {a / times[2]:.1f}x" if default_dtype != "float32" else \
            "(the default is float32 here) |"
        short.append(f"{what.split(' (')[0]}: {a / eager:.1f}x")
        if args.compile and what.startswith("pretraining") and not compiled:
            c = times[-1]
            compiled = f" {fmt(c)} | {a / c:.1f}x | {eager / c:.2f}x |"
            short.append(f"compiled {what.split(' (')[0]}: {eager / c:.2f}x the eager step "
                         f"({fmt(c)} against {fmt(eager)})")
            verdict.setdefault("faster", []).append(eager / c > 1)
        print(f"| {what} | {fmt(a)} | {fmt(b)} | {a / b:.1f}x | {cells} |{compiled or blank}", flush=True)
    # rope (the 2024 handout's) beside vanilla, both on the default path: what RoPE's rotation costs
    vanilla_step, rope_step = (make_step(False, False, pretrain.vocab_size, x_pt, y_pt, default_dtype, device, rope=r)
                               for r in (False, True))
    a, b = side_by_side(args.reps, vanilla_step, rope_step, device=device)
    rope_line = (f"pretraining step, rope beside vanilla (default, {default_dtype}): {fmt(b)} against {fmt(a)}, "
                 f"{b / a:.2f}x vanilla's")
    short.append(rope_line)
    checkpoint_line = checkpoint_cost(pretrain, x_pt, y_pt, default_dtype, device, a, args.reps)
    short.append(checkpoint_line)
    for variant in ("vanilla", "perceiver"):
        course, default, n = decode_eval(D, pretrain, variant == "perceiver", device, args.questions)
        a, b = side_by_side(1, course, default, device=device)
        print(f"| greedy decoding of {n} dev questions, {variant} (untrained model, all 32 characters) "
              f"| {fmt(a)} | {fmt(b)} | {a / b:.1f}x | | |{blank}", flush=True)
        short.append(f"greedy decoding of {n} dev questions, {variant}: {a / b:.1f}x")
    if args.compile:
        try:
            eager, compiled = compiled_losses(pretrain.vocab_size, x_pt, y_pt, default_dtype, device)
            worst = max(abs(c - e) / abs(e) for c, e in zip(compiled, eager))
            # bf16 keeps 8 bits of mantissa: a fused kernel may round differently (2^-8 = 0.004 a rounding)
            same = worst < (1e-2 if default_dtype != "float32" else 1e-4)
            short.append(f"compiled step, vanilla, {len(eager)} steps on one batch without dropout: losses "
                         f"{' '.join(f'{v:.4f}' for v in compiled)} against eager {' '.join(f'{v:.4f}' for v in eager)}"
                         f", largest relative difference {worst:.1e}: "
                         f"{'the same within ' + default_dtype + ' rounding' if same else 'DIFFERENT'}")
            verdict["same"] = same
        except Exception as e:  # noqa: BLE001
            short.append(f"compiled step, vanilla, without dropout: {failed(e)}")

    if args.cli:
        import tempfile
        tmp = tempfile.mkdtemp()
        epochs = args.cli_epochs or (1 if device == "cpu" else 30)
        per_epoch = math.ceil(len(pretrain) / 128)
        on = ["--device", device]
        curves = {}
        for variant in ("vanilla", "perceiver"):
            pt = ["pretrain", variant, f"{D}/wiki.txt", "--max_epochs", str(epochs), "--bottleneck_dim", "64"] + on
            way = lambda w, *extra: cli(pt + ["--writing_params_path", f"{variant}.{w}.params", "--tb_expt_name", w]
                                        + list(extra), tmp, per_epoch)
            (a, ra, ca, sa), (b, rb, cb, sb) = way("plain", "--plain"), way("default")
            curves[variant] = {"--plain": ca, "default": cb}
            course, default = rate_cell(a, ra, sa), f"{rate_cell(b, rb, sb)} | {rb / ra:.1f}x"
            cells = f"{default} | | |" if default_dtype == "float32" else f" | | {default} |"
            compiled = blank
            if args.compile and variant == "vanilla":
                try:
                    c, rc, cc, sc = way("compiled", "--compile")
                    curves[variant]["compiled"] = cc
                    compiled = f" {rate_cell(c, rc, sc)} | {rc / ra:.1f}x | {rc / rb:.2f}x |"
                    steady = f"{sc:.2f} against eager {sb:.2f} ({sc / sb:.2f}x)" if sc and sb else "n/a (one epoch)"
                    short.append(f"compiled `run.py pretrain {variant} --max_epochs {epochs}`: steps/s after epoch 1 "
                                 f"{steady}; whole command {fmt(c)} against {fmt(b)}")
                    if sc and sb:
                        verdict.setdefault("faster", []).append(sc > sb)
                    if cc and cb:
                        d = max(abs(u - v) for u, v in zip(cc, cb))
                        d0 = max(abs(u - v) for u, v in zip(ca, cb))
                        short.append(f"per-epoch loss of `run.py pretrain {variant}`, compiled against eager: largest "
                                     f"difference {d:.3f} over {min(len(cc), len(cb))} epochs (--plain against "
                                     f"eager, another dropout stream too: {d0:.3f})")
                except Exception as e:  # noqa: BLE001
                    compiled = f" {failed(e)} | | |"
            print(f"| `run.py pretrain {variant} --max_epochs {epochs}` (whole command; speed-up in steps/s) "
                  f"| {course} | {cells}{compiled}", flush=True)
            short.append(f"whole-command pretraining, {variant}, steps/s: {rb / ra:.1f}x")
        dev = f"{D}/birth_dev.tsv"
        if args.questions:
            dev = os.path.join(tmp, "dev.tsv")
            with open(f"{D}/birth_dev.tsv", encoding="utf-8") as f, open(dev, "w", encoding="utf-8") as g:
                g.writelines([line for line in f if line.strip()][:args.questions])
        ev = ["evaluate", "vanilla", f"{D}/wiki.txt", "--reading_params_path", "vanilla.default.params",
              "--eval_corpus_path", dev, "--outputs_path", "dev.predictions"] + on
        (a, *_), (b, *_) = cli(ev + ["--plain"], tmp), cli(ev, tmp)
        print(f"| `run.py evaluate vanilla` on the dev set (whole command) | {fmt(a)} | {fmt(b)} | {a / b:.1f}x "
              f"| | |{blank}")
        short.append(f"whole-command evaluate, vanilla: {a / b:.1f}x")
        ways = list(curves["vanilla"])
        last = min(len(c) for c in curves["vanilla"].values())
        if last:
            print(f"\nMean training loss per epoch of `run.py pretrain vanilla` above (other dropout and corruption "
                  f"draws each way):\n\n| epoch | {' | '.join(ways)} |\n|" + " --- |" * (len(ways) + 1))
            for e in sorted({1, 2, 5, 10, 20, 30, 50, last} & set(range(1, last + 1))):
                print(f"| {e} | " + " | ".join(f"{curves['vanilla'][w][e - 1]:.3f}" for w in ways) + " |")

    if args.compile:
        faster, same = all(verdict.get("faster") or [False]), verdict.get("same", False)
        short.append("so --compile here: " + ("faster, with the same losses: a candidate for this device's default"
                                               if faster and same else "keep eager (" + ", ".join(
                                                   ([] if faster else ["not faster everywhere"])
                                                   + ([] if same else ["not the same losses"])) + ")"))
    print(f"\n{rope_line[0].upper()}{rope_line[1:]}.")
    print(f"\n{checkpoint_line[0].upper()}{checkpoint_line[1:]}.")
    print(f"\nIn short: run.py's default ({default_dtype}) against --plain"
          + (", and compiled against eager" if args.compile else "") + ":")
    for line in short:
        print(f"- {line}")


if __name__ == "__main__":
    main()
