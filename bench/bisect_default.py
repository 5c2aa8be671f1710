"""
Which of the default path's speed settings changes the handout's pretraining on
this device: its first epochs under variants that differ from the failing one, or
from the course's computation, in one setting each, all at once, with each one's
per-epoch loss beside the reference curves.

  python bench/bisect_default.py WIKI OUT [--epochs 50] [--device cuda] [--variants ...]
      [--reference REF/ref_vanilla_course_s0.csv ...]

Why: on an H100 the default path in bf16, which then trained attention with
SDPA's dropout, never left the handout's loss plateau (2.59 at epoch 40 where the
course's runs are at 2.35, 2.9 at epoch 50 against 2.16: results/gpu/README.md),
while the same settings on CPU did. Training's attention is now explicit on every
device; whether bf16 can come back on GPUs, and whether SDPA's kernels (cuDNN's
first) were the cause, the variants bf16, bf16_sdpa_no_cudnn and bf16_sdpa tell
(bench/gpu_check.sh's bisect stage). Fifty epochs show it: 1,150 steps a variant,
about 30 s at the 41 steps/s one pipeline ran alone there, so a lent GPU can tell.
Each variant is run.py's pretraining of the vanilla model (same lr schedule, seed
and data order; no checkpoints), in its own process, OUT/<variant>.csv holding
its per-epoch mean loss (the references' columns) and OUT/<variant>.log its
output; OUT/bisect.md the table, printed too. --variants picks some of:
"""

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

# each: (what it is, run.py's flags, the settings changed after run.py chose them for the device;
# "attention": the model's (attention.py: sdpa puts training's dropout into SDPA's kernels);
# "cudnn_sdp": False disables cuDNN's SDPA kernels, which torch 2.11+ prefers on Hopper GPUs)
VARIANTS = {
    "course": ("--plain: the course's computation (float32, explicit attention, torch's AdamW, a DataLoader)",
               ["--plain"], {}),
    "default": ("the default path (--dtype auto: float32 on a GPU)", [], {}),
    "bf16": ("the default path in bf16 (training's attention explicit)", ["--dtype", "bfloat16"], {}),
    "bf16_sdpa": ("bf16, training's attention and its dropout in SDPA's kernels (the H100's failing run)",
                  ["--dtype", "bfloat16"], {"attention": "sdpa"}),
    "bf16_sdpa_no_cudnn": ("bf16 through SDPA as bf16_sdpa, cuDNN's attention disabled",
                           ["--dtype", "bfloat16"], {"attention": "sdpa", "cudnn_sdp": False}),
    "bf16_dataloader": ("bf16, batches from the course's DataLoader instead of made on the device",
                        ["--dtype", "bfloat16"], {"device_batches": False}),
    "bf16_torch_adamw": ("bf16, torch's default AdamW instead of the fused kernel",
                         ["--dtype", "bfloat16"], {"fused_adamw": False}),
    "course_bf16": ("the course's computation under bf16 autocast, nothing else changed",
                    ["--plain"], {"dtype": "bfloat16"}),
    "default_compiled": ("the default path compiled (--compile: CUDA graphs on a GPU), the GPU default's candidate",
                         ["--compile"], {}),
}
__doc__ += "".join(f"  {name:24} {what}\n" for name, (what, _, _) in VARIANTS.items())


class ScalarLog:
    """Stands in for a SummaryWriter: keeps each tag's values (train/loss, train/lr), in step order."""

    def __init__(self):
        self.values = {}

    def add_scalar(self, tag, value, step):
        self.values.setdefault(tag, []).append(value)


def train_variant(name, wiki, out, epochs, device, seed):
    """One variant's pretraining; writes OUT/<name>.csv (pretrain, epoch, mean_loss, lr_after_epoch)."""
    import torch

    import dataset
    import hardware
    import run
    import trainer
    import utils
    from attention import CausalSelfAttention
    from reference_curve import epoch_rows, write_csv
    _, flags, changes = VARIANTS[name]
    args = run.parse_args(["pretrain", "vanilla", wiki, "--writing_params_path", os.path.join(out, f"{name}.params"),
                           "--max_epochs", str(epochs), "--device", device, "--seed", str(seed)] + flags)
    device, _ = hardware.setup_distributed(hardware.pick_device(args.device))  # as run.py: one process
    utils.set_seed(args.seed)
    ds = dataset.CharCorruptionDataset(run.read_text(wiki), run.BLOCK_SIZE)
    gpt = run.build_model(args, ds.vocab_size).to(device)
    attention = [m for m in gpt.modules() if isinstance(m, CausalSelfAttention)]
    args.corpus_sha256 = None
    tconf = run.trainer_config(args, "pretrain", len(ds), len(ds), device, (0, 1))
    for key, value in changes.items():
        if key == "attention":
            for m in attention:
                m.attention = value
        elif key == "cudnn_sdp":
            torch.backends.cuda.enable_cudnn_sdp(value)  # a flag of this process's, harmless without CUDA
        else:
            if key == "dtype":
                value = hardware.pick_dtype(value, device)  # the emulated-bf16 fallback and its note, as run.py's
            setattr(tconf, key, value)
    tconf.ckpt_path = None
    tconf.writer = ScalarLog()
    print(f"{name}: {VARIANTS[name][0]}\n{device}, dtype {tconf.dtype}, sub_batches {tconf.sub_batches}, "
          f"device_batches {tconf.device_batches}, fused_adamw {tconf.fused_adamw}, attention "
          f"{attention[0].attention}, cudnn_sdp {changes.get('cudnn_sdp', True)}, compile {tconf.compile}", flush=True)
    t = trainer.Trainer(gpt, ds, None, tconf)
    t.train()
    logged = tconf.writer.values
    write_csv(epoch_rows(logged.get("train/loss", []), logged.get("train/lr", []), t.total_steps() // epochs),
              os.path.join(out, f"{name}.csv"))


def table(out, names, references, epochs):
    """The per-epoch losses of the variants that finished beside the references, and each one's gap to them."""
    from reference_curve import read_reference, side_by_side
    curves = {}
    for name in names:
        path = os.path.join(out, f"{name}.csv")
        if os.path.exists(path):
            curves[name] = read_reference(path)
    refs = {os.path.splitext(os.path.basename(p))[0]: read_reference(p) for p in references}
    lines = side_by_side({**curves, **refs}, epochs) + [""]
    for name, curve in curves.items():
        last = max(curve)
        at_last = [r[last] for r in refs.values() if last in r]
        if at_last:
            gap = curve[last] - sum(at_last) / len(at_last)
            # the course's runs fall 0.3 from epoch 40 to 50; a run on the plateau stays 0.4 and more above
            verdict = "with the references" if gap < 0.15 else "**off the references' curve**"
            lines.append(f"- {name}: epoch {last} loss {curve[last]:.3f}, {gap:+.3f} from the references' mean: "
                         f"{verdict}")
    missing = [n for n in names if n not in curves]
    if missing:
        lines.append(f"- did not finish (see their .log): {', '.join(missing)}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "bisect.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return text


def main():
    argp = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    argp.add_argument("wiki")
    argp.add_argument("out")
    argp.add_argument("--epochs", type=int, default=50)
    argp.add_argument("--device", default="cuda")
    argp.add_argument("--seed", type=int, default=0)
    argp.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    argp.add_argument("--jobs", type=int, default=0, help="variants at once (default: all on a GPU, 1 on CPU)")
    argp.add_argument("--reference", nargs="*", default=[], help="reference CSVs (../shared/reference)")
    argp.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process: this one variant
    args = argp.parse_args()
    if args.one:
        train_variant(args.one, args.wiki, args.out, args.epochs, args.device, args.seed)
        return
    os.makedirs(args.out, exist_ok=True)
    jobs = args.jobs or (len(args.variants) if args.device.startswith("cuda") else 1)
    env = dict(os.environ)
    if jobs > 1 and not args.device.startswith("cuda"):
        env.setdefault("OMP_NUM_THREADS", "1")  # CPU processes side by side: their threads would spin
    waiting, running, failed = list(args.variants), {}, []
    start = time.time()
    while waiting or running:
        while waiting and len(running) < jobs:
            name = waiting.pop(0)
            log = open(os.path.join(args.out, f"{name}.log"), "w")
            cmd = [sys.executable, os.path.abspath(__file__), args.wiki, args.out, "--epochs", str(args.epochs),
                   "--device", args.device, "--seed", str(args.seed), "--one", name]
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        time.sleep(0.5)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[name]
                if proc.returncode:
                    failed.append(name)
                print(f"[{time.time() - start:.0f} s] {name}: exit {proc.returncode}", flush=True)
    print(table(args.out, args.variants, args.reference, args.epochs), end="")
    if failed:
        sys.exit(f"bisect_default.py: failed: {', '.join(failed)} (their logs: {args.out}/<variant>.log)")


if __name__ == "__main__":
    main()
