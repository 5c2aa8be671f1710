"""
The small pieces of bench/gpu_check.sh that want Python: the card's name, the
concurrency probe, the kernels of a training and an evaluation step, and the
summary table of a results folder (written again after every stage, and by
--wait while the run goes on, so that a cut-off run still leaves one).

  python bench/gpu_check.py card DEVICE
  python bench/gpu_check.py probe DEVICE WIKI RUNS EPOCHS FOLDER  # prints probe.md, writes FOLDER/parallel.txt
  python bench/gpu_check.py kernels DEVICE WIKI                   # prints kernels.md
  python bench/gpu_check.py summary RESULTS                       # writes RESULTS/summary.md and prints it
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["probe", "tests", "kernels", "vanilla", "perceiver", "bisect", "rope", "recipe", "compiled", "bench"]
WHAT = {
    "probe": "runs side by side: do they keep their speed?",
    "tests": "CUDA-only tests (pytest -k cuda)",
    "kernels": "kernels of a training and an evaluation step",
    "vanilla": "handout pipeline, vanilla",
    "perceiver": "handout pipeline, perceiver m=64",
    "bisect": "first pretraining epochs: may bf16 be the GPU default?",
    "rope": "2024 handout pipeline, rope",
    "recipe": "the fastest recipe's pipeline (results/recipes/)",
    "compiled": "vanilla pipeline with --compile",
    "bench": "bench_speed.py, --plain against default",
}
# dev accuracy of the handout pipeline by a course-faithful trainer on one H100 (../shared/reference/README.md)
REFERENCE_DEV = {"vanilla": "27.8% and 21.7% (seeds 0, 1)", "perceiver": "13.6%",
                 "rope": "40.4% (one public T4 run)", "compiled": "eager: the vanilla row"}
# the names of scaled_dot_product_attention's kernels and ops (flash, memory-efficient, cuDNN, CPU)
SDPA = re.compile(r"flash|fmha|sdpa|scaled_dot_product|efficient_attention", re.I)


def card(device):
    import torch
    if not device.startswith("cuda"):
        return "cpu"
    if not torch.cuda.is_available():
        sys.exit(f"gpu_check.py: error: DEVICE={device} but torch {torch.__version__} sees no CUDA device "
                 f"(DEVICE=cpu runs the tiny CPU check)")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", torch.cuda.get_device_name(torch.device(device))).strip("_")


def trained_rate(stdout):
    """The steps/s of run.py's closing "trained ..." line, or None."""
    m = re.search(r"^trained .* ([0-9.]+) steps/s", stdout, re.M)
    return float(m.group(1)) if m else None


def probe(device, wiki, runs, epochs, folder):
    """
    One short pretraining alone, then `runs` of them at once, each in a folder of its own: a
    handout step is bound by the host's kernel launches, so on a host with many cores runs side
    by side should keep their speed. Prints a table; writes how many pipelines to run at once.
    """
    runs, epochs = int(runs), int(epochs)

    def start(name):
        cwd = os.path.join(folder, name)
        os.makedirs(cwd, exist_ok=True)
        return subprocess.Popen([sys.executable, os.path.join(ROOT, "src", "run.py"), "pretrain", "vanilla", wiki,
                                 "--writing_params_path", "p.params", "--max_epochs", str(epochs), "--device", device],
                                cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def rates(procs):
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            sys.exit(f"gpu_check.py probe: a run failed (exit {[p.returncode for p in procs]})")
        return [trained_rate(o) for o in outs]
    alone = rates([start("alone")])[0]
    together = rates([start(f"together{k}") for k in range(runs)])
    kept = statistics.fmean(together) / alone
    parallel = runs if kept >= 0.7 else 2
    with open(os.path.join(folder, "parallel.txt"), "w") as f:
        f.write(f"{parallel}\n")
    print(f"`run.py pretrain vanilla --max_epochs {epochs} --device {device}`, steps/s (start-up of the first steps "
          f"included):\n\n| runs at once | steps/s of each |\n| --- | --- |\n| 1 | {alone:.2f} |\n"
          f"| {runs} | {', '.join(f'{r:.2f}' for r in together)} |\n")
    print(f"- {runs} at once kept {kept:.0%} of the lone run's steps/s: {parallel} pipelines run at once")


def kernels(device, wiki):
    """
    The kernels (on CPU: the aten ops) of one profiled training step and one evaluation forward of
    the handout's vanilla model on the default path, with SDPA's marked: training must run none.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import dataset
    import hardware
    import run
    import trainer
    with open(wiki, encoding="utf-8") as f:
        ds = dataset.CharCorruptionDataset(f.read(), run.BLOCK_SIZE)
    torch.manual_seed(0)
    gpt = run.build_model(argparse.Namespace(variant="vanilla", bottleneck_dim=64, plain=False), ds.vocab_size)
    dtype = hardware.pick_dtype("auto", device)
    t = trainer.Trainer(gpt, ds, None, trainer.TrainerConfig(
        learning_rate=6e-3, batch_size=128, device=device, **hardware.speed_settings(device, dtype, 128)))
    x, y = next(t.epoch_batches())
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def profiled(step):
        step()  # once first: warm-up and kernel choice
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            step()
            if cuda:
                torch.cuda.synchronize()
        events = [e for e in prof.key_averages()
                  if (e.device_type == torch.autograd.DeviceType.CUDA if cuda else e.key.startswith("aten::"))]
        return sorted(events, key=lambda e: -(e.self_device_time_total if cuda else e.self_cpu_time_total))

    def train_step():
        gpt.train()
        t.train_step(x, y)

    def eval_step():
        gpt.eval()
        with torch.no_grad():
            gpt(x)
    print(f"The handout's vanilla model on {device}'s default path ({dtype}, 128 rows; "
          f"{'CUDA kernels' if cuda else 'aten ops'}, by self time):\n")
    verdicts = []
    for name, step in (("training step", train_step), ("evaluation forward", eval_step)):
        events = profiled(step)
        sdpa = [e.key for e in events if SDPA.search(e.key)]
        softmax = [e.key for e in events if "softmax" in e.key.lower()]
        print(f"## {name}\n\n| kernel | calls | self time |\n| --- | --- | --- |")
        for e in events[:15]:
            time_us = e.self_device_time_total if cuda else e.self_cpu_time_total
            mark = " (SDPA)" if SDPA.search(e.key) else ""
            print(f"| {e.key[:90].replace('|', '/')}{mark} | {e.count} | {time_us / 1e3:.2f} ms |")
        print()
        attention = (f"SDPA's {', '.join(k[:60] for k in sdpa[:3])}" if sdpa else
                     f"explicit ({', '.join(k[:40] for k in softmax[:2]) or 'no softmax kernel seen'})")
        verdicts.append(f"{name}: attention {attention}")
        if name == "training step" and sdpa:
            verdicts[-1] += ": **SDPA in training**"
    print("\n".join(f"- {v}" for v in verdicts))


def read(path, default=""):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return default


def duration(seconds):
    seconds = int(seconds)
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60} s"


def status(results, stage):
    """(shown status, wall time) of a stage from RESULTS/stages/STAGE.status, or None if not asked for."""
    line = read(os.path.join(results, "stages", f"{stage}.status")).split()
    if not line:
        return None
    state, rest = line[0], line[1:]
    if state == "running":
        return "running", duration(time.time() - float(rest[0])) + " so far"
    if state == "waiting":
        return "waiting", ""
    wall = duration(float(rest[0])) if rest else ""
    if state == "FAILED":
        return f"**FAILED** ({' '.join(rest[1:])})", wall
    return state, wall


def tests_result(results):
    log = read(os.path.join(results, "tests.log"))
    counts = re.findall(r"^.*\d+ (?:passed|failed|skipped|deselected|errors?).*$", log, re.M)
    return counts[-1].strip("= ") if counts else ""


def pipeline_result(results, variant, state):
    folder = os.path.join(results, "pipelines", variant)
    log = read(os.path.join(folder, "log.txt"))
    parts = []
    if state == "running":
        commands = re.findall(r"^\$ python src/run\.py (\w+)", log, re.M)
        # run.py's progress bar redraws with \r: its last state is the last 'epoch E iter I' it drew
        epochs = re.findall(r"epoch (\d+) iter", read(os.path.join(folder, "last.err")))
        if commands:
            parts.append(f"now: {commands[-1]}" + (f", epoch {epochs[-1]}" if epochs else ""))
    trained = re.search(r"^trained (\d+) epochs, (\d+) steps .* in ([\d.]+)s: ([\d.]+) steps/s", log, re.M)
    if trained:
        parts.append(f"pretraining {trained.group(1)} epochs in {duration(float(trained.group(3)))}, "
                     f"{trained.group(4)} steps/s")
    dev = re.search(r"^Correct: ([\d.]+) out of ([\d.]+): ([\d.]+)%", log, re.M)
    if dev:
        reference = f"; course-faithful trainer: {REFERENCE_DEV[variant]}" if variant in REFERENCE_DEV else ""
        parts.append(f"**dev {float(dev.group(3)):.1f}%** ({float(dev.group(1)):.0f}/{float(dev.group(2)):.0f}"
                     f"{reference})")
    rows = [r for r in read(os.path.join(results, f"loss_{variant}.md")).splitlines() if r.startswith("| ")]
    if len(rows) >= 2:
        head = [c.strip() for c in rows[0].strip("|").split("|")]
        last = [c.strip() for c in rows[-1].strip("|").split("|")]
        refs = ", ".join(f"{h} {v}" for h, v in zip(head[2:], last[2:]) if v)
        parts.append(f"pretraining loss at epoch {last[0]}: {last[1]}" + (f" (reference: {refs})" if refs else ""))
    return "; ".join(parts)


def bench_short(results):
    """The lines after bench_speed.py's table ('- ...'), which sum it up."""
    text = read(os.path.join(results, "bench.md"))
    if "\nIn short" not in text:
        return []
    return [line[2:] for line in text.split("\nIn short", 1)[1].splitlines() if line.startswith("- ")]


def summary(results):
    env = read(os.path.join(results, "env.txt")).splitlines()
    lines = [f"# GPU check: {os.path.basename(os.path.abspath(results))}", ""]
    lines += [f"{line}  " for line in env[:4]] + [""]
    lines += ["| stage | what | status | wall time | result |", "| --- | --- | --- | --- | --- |"]
    short = bench_short(results)
    for stage in STAGES:
        st = status(results, stage)
        if st is None:
            continue
        state, wall = st
        note = read(os.path.join(results, "stages", f"{stage}.note")).strip()
        if stage == "tests":
            result = tests_result(results)
        elif stage in ("probe", "kernels", "bisect"):  # their verdicts, the lines "- ..." of their tables
            table = os.path.join(results, "bisect", "bisect.md") if stage == "bisect" else \
                os.path.join(results, f"{stage}.md")
            result = "; ".join(line[2:] for line in read(table).splitlines() if line.startswith("- "))
        elif stage == "bench":
            result = "; ".join(s for s in short if not s.startswith(("greedy", "finetuning step, perceiver")))
        else:
            result = pipeline_result(results, stage, state)
        if state.startswith("**FAILED"):  # the stage's last words
            last = [line for line in read(os.path.join(results, f"{stage}.log")).splitlines() if line.strip()]
            note = "; ".join(p for p in (note, last[-1].strip()[:200] if last else "") if p)
        result = "; ".join(p for p in (note, result) if p)
        lines.append(f"| {stage} | {WHAT[stage]} | {state} | {wall} | {result.replace('|', '/')} |")
    if short:
        lines += ["", "bench_speed.py in short (`bench.md` has the table):", ""] + [f"- {s}" for s in short]
    finished = read(os.path.join(results, "finished")).strip()
    lines += ["", finished or f"still running at {time.strftime('%H:%M:%S', time.gmtime())} UTC",
              "", "Commands: `commands.txt`; pipeline logs: `pipelines/*/log.txt`; per-epoch loss beside the "
              "reference: `loss_*.csv`, `loss_*.md`, `loss_*.png`; stage logs: `*.log`."]
    text = "\n".join(lines) + "\n"
    tmp = os.path.join(results, f".summary.md.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, os.path.join(results, "summary.md"))  # --wait may read it while a stage writes it
    return text


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "card":
        print(card(*args))
    elif what == "probe":
        probe(*args)
    elif what == "kernels":
        kernels(*args)
    elif what == "summary":
        print(summary(*args), end="")
    else:
        sys.exit(f"gpu_check.py: error: unknown command {what} (card, probe, kernels, summary)")


if __name__ == "__main__":
    main()
