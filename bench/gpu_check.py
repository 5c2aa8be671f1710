"""
The small pieces of bench/gpu_check.sh that want Python: the card's name, the
steps of a pretraining epoch, the same-seed comparison of two params files, and
the summary table of a results folder (written again after every stage, and by
--wait while the run goes on, so that a cut-off run still leaves one).

  python bench/gpu_check.py card DEVICE
  python bench/gpu_check.py steps_per_epoch WIKI ROWS
  python bench/gpu_check.py same_params A.params B.params   # exit 0: identical, 3: they differ
  python bench/gpu_check.py summary RESULTS                 # writes RESULTS/summary.md and prints it
"""

import math
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["tests", "bisect", "same_seed", "vanilla", "perceiver", "bench"]
WHAT = {
    "tests": "CUDA-only tests (pytest -k cuda)",
    "bisect": "first pretraining epochs, one setting changed per variant",
    "same_seed": "two same-seed runs, same params?",
    "vanilla": "handout pipeline, vanilla",
    "perceiver": "handout pipeline, perceiver m=64",
    "bench": "bench_speed.py, --plain against default",
}
# dev accuracy of the handout pipeline by a course-faithful trainer on one H100 (../shared/reference/README.md)
REFERENCE_DEV = {"vanilla": "27.8% and 21.7% (seeds 0, 1)", "perceiver": "13.6%"}


def card(device):
    import torch
    if not device.startswith("cuda"):
        return "cpu"
    if not torch.cuda.is_available():
        sys.exit(f"gpu_check.py: error: DEVICE={device} but torch {torch.__version__} sees no CUDA device "
                 f"(DEVICE=cpu runs the tiny CPU check)")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", torch.cuda.get_device_name(torch.device(device))).strip("_")


def steps_per_epoch(wiki, rows):
    sys.path.insert(0, os.path.join(ROOT, "src"))
    import dataset
    with open(wiki, encoding="utf-8") as f:
        return math.ceil(len(dataset.CharCorruptionDataset(f.read(), 128)) / int(rows))


def same_params(a, b):
    """One line: identical, or how far apart; True if identical."""
    import torch
    pa, pb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    if list(pa) != list(pb):
        return False, f"different tensors: {sorted(set(pa) ^ set(pb))[:3]}"
    differ = [k for k in pa if not torch.equal(pa[k], pb[k])]
    if not differ:
        return True, f"all {len(pa)} tensors equal"
    gaps = {k: (pa[k].double() - pb[k].double()).abs().max().item() for k in differ}
    worst = max(gaps, key=gaps.get)
    return False, (f"{len(differ)} of {len(pa)} tensors differ, largest |difference| {gaps[worst]:.2e} "
                   f"(in {worst})")


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
        parts.append(f"**dev {float(dev.group(3)):.1f}%** ({float(dev.group(1)):.0f}/{float(dev.group(2)):.0f}; "
                     f"course-faithful trainer: {REFERENCE_DEV[variant]})")
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
        elif stage == "bisect":  # its verdicts: "- variant: epoch E loss L, +G from the references' mean: ..."
            result = "; ".join(line[2:] for line in read(os.path.join(results, "bisect", "bisect.md")).splitlines()
                               if line.startswith("- "))
        elif stage == "same_seed":
            result = "; ".join(read(os.path.join(results, "same_seed.txt")).strip().splitlines())
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
    elif what == "steps_per_epoch":
        print(steps_per_epoch(*args))
    elif what == "same_params":
        same, line = same_params(*args)
        print(line)
        sys.exit(0 if same else 3)
    elif what == "summary":
        print(summary(*args), end="")
    else:
        sys.exit(f"gpu_check.py: error: unknown command {what} (card, steps_per_epoch, same_params, summary)")


if __name__ == "__main__":
    main()
