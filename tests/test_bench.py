"""The analysis scripts under bench/ run on the bundled corpus."""
import math
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import dataset
import model
from conftest import ROOT

DATA = os.path.join(ROOT, "data")
PROBE = os.path.join(ROOT, "bench", "probe_memory.py")


def lines(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def test_probe_memory_counts_the_biographies_it_can_probe(tmp_path):
    with open(os.path.join(DATA, "wiki.txt"), encoding="utf-8") as f:
        wiki = f.read()
    ds = dataset.CharCorruptionDataset(wiki, 128)
    torch.manual_seed(0)
    gpt = model.GPT(model.GPTConfig(ds.vocab_size, 128, n_layer=4, n_head=8, n_embd=256))
    torch.save(gpt.state_dict(), tmp_path / "p.params")
    train = os.path.join(DATA, "birth_places_train.tsv")
    out = subprocess.run([sys.executable, PROBE, os.path.join(DATA, "wiki.txt"), str(tmp_path / "p.params"), train],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    m = re.fullmatch(r"recalled (\d+) of (\d+) birthplaces \(\S+%\); always '.+' would get (\d+) \(\S+%\)\n",
                     out.stdout)
    assert m, out.stdout
    recalled, probed, prior = map(int, m.groups())
    # every train person has a biography naming the place early; an untrained model recalls none of them
    with open(train, encoding="utf-8") as f:
        people = sum(1 for line in f if line.strip())
    assert probed >= people and recalled == 0 and prior > 0

    (tmp_path / "nobody.tsv").write_text("Where was Nobody Atall born?\tNowhere\n", encoding="utf-8")
    out = subprocess.run([sys.executable, PROBE, os.path.join(DATA, "wiki.txt"), str(tmp_path / "p.params"),
                          str(tmp_path / "nobody.tsv")], capture_output=True, text=True)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "no biography" in out.stderr


def test_probe_memory_probes_rope_params_as_rope(tmp_path):
    """results/recipes/ probes rope models: --variant rope builds the 2024 model; without it they are refused."""
    with open(os.path.join(DATA, "wiki.txt"), encoding="utf-8") as f:
        ds = dataset.CharCorruptionDataset(f.read(), 128)
    torch.manual_seed(0)
    gpt = model.GPT(model.GPTConfig(ds.vocab_size, 128, n_layer=4, n_head=8, n_embd=256, rope=True))
    torch.save(gpt.state_dict(), tmp_path / "rope.params")
    argv = [sys.executable, PROBE, os.path.join(DATA, "wiki.txt"), str(tmp_path / "rope.params"),
            os.path.join(DATA, "birth_dev.tsv")]
    out = subprocess.run(argv + ["--variant", "rope"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("recalled 0 of "), out.stdout + out.stderr
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode != 0 and "holds rope params, but this run builds a vanilla model" in out.stderr, out.stderr


def test_snapshot_curve_finetunes_and_evaluates_each_checkpoint(tmp_path):
    with open(os.path.join(DATA, "wiki.txt"), encoding="utf-8") as f:
        ds = dataset.CharCorruptionDataset(f.read(), 128)
    torch.manual_seed(0)
    gpt = model.GPT(model.GPTConfig(ds.vocab_size, 128, n_layer=4, n_head=8, n_embd=256))
    # the keys the trainer writes that the script reads (see Trainer.save_checkpoint)
    state = {key: None for key in checkpoint.KEYS}  # a checkpoint holds them all (checkpoint.load checks)
    state.update({"format": checkpoint.FORMAT, "model": gpt.state_dict(), "epoch": 7, "step": 28})
    torch.save(state, tmp_path / "ep7.ckpt")
    script = os.path.join(ROOT, "bench", "snapshot_curve.py")
    out = subprocess.run([sys.executable, script, DATA, str(tmp_path / "out"), str(tmp_path / "ep7.ckpt")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    dev = lines("birth_dev.tsv")
    assert re.search(rf"^\| 7 \| 28 \| Correct: \d+\.0 out of {dev}\.0: \S+% \|$", out.stdout, re.M), out.stdout
    with open(tmp_path / "out" / "ep7.dev.predictions", encoding="utf-8") as f:
        assert len(f.read().splitlines()) == dev
    # the extracted params are exactly the checkpoint's model
    params = torch.load(tmp_path / "out" / "ep7.pretrain.params", weights_only=True)
    assert all(torch.equal(params[k], v) for k, v in gpt.state_dict().items())


def test_pipeline_logs_an_interruption_readably_and_resumes(tmp_path):
    """Interrupt bench/pipeline.sh during pretraining: its log ends with run.py's message, not a wall of
    progress-bar redraws; the same command then resumes and finishes the pipeline."""
    import signal
    out = tmp_path / "run"
    cmd = ["bash", os.path.join(ROOT, "bench", "pipeline.sh"), "vanilla", DATA, str(out), "--max_epochs", "6",
           "--batch_size", "32"]  # 4 steps an epoch, 24 in all: the interruption comes after the first
    # every command on CPU (FLAGS), one thread: a step takes about as long anywhere (tests/test_robustness.py's paced)
    env = dict(os.environ, PYTHON=sys.executable, FLAGS="--device cpu", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    # the first step is done (and run.py's signal handlers are in place) once its progress bar names a loss
    err, hung = out / "last.err", time.monotonic() + 300
    while not (err.exists() and b"train loss" in err.read_bytes()):
        assert proc.poll() is None and time.monotonic() < hung, (out / "log.txt").read_text(encoding="utf-8")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 1
    log = (out / "log.txt").read_text(encoding="utf-8").splitlines()
    assert log[-1].startswith("interrupted by SIGINT at epoch ") and "--resume" in log[-1]
    assert all(len(line) < 300 for line in log)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert "--resume" in log and "resuming from vanilla.pretrain.params.ckpt" in log
    assert re.search(rf"Correct: \d+\.0 out of {lines('birth_dev.tsv')}\.0", log)
    with open(out / "vanilla.pretrain.test.predictions", encoding="utf-8") as f:
        assert len(f.read().splitlines()) == lines("birth_test_inputs.tsv")
    # bench/plot_loss.py's plot of both phases, and its one-line summary of each run
    summaries = re.findall(r"^(pretrain|finetune)/run_vanilla.*: \d+ steps, smoothed loss", log, re.M)
    assert (out / "loss.png").is_file() and sorted(summaries) == ["finetune", "pretrain"], log


def test_grad_precision_tells_safe_params_from_unsafe(tmp_path):
    with open(os.path.join(DATA, "wiki.txt"), encoding="utf-8") as f:
        ds = dataset.CharCorruptionDataset(f.read(), 128)
    torch.manual_seed(0)
    gpt = model.GPT(model.GPTConfig(ds.vocab_size, 128, n_layer=4, n_head=8, n_embd=256))
    torch.save(gpt.state_dict(), tmp_path / "init.params")
    # the handout lr's regime: query and key weights several times their initial norm
    with torch.no_grad():
        for block in gpt.blocks:
            block.attn.query.weight.mul_(40)
            block.attn.key.weight.mul_(40)
    torch.save({"model": gpt.state_dict(), "epoch": 1}, tmp_path / "grown.ckpt")
    script = os.path.join(ROOT, "bench", "grad_precision.py")
    out = subprocess.run([sys.executable, script, os.path.join(DATA, "wiki.txt"), str(tmp_path / "init.params"),
                          str(tmp_path / "grown.ckpt"), "--rows", "4"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = re.findall(r"^\| \S+ \| [\d.]+ \| ([\d,. /]+) \| ([\d.]+) \| (-?[\d.]+) \|$", out.stdout, re.M)
    assert len(rows) == 2, out.stdout
    (init_logits, init_fp32, init_bf16), (grown_logits, grown_fp32, grown_bf16) = rows
    largest = lambda s: max(float(v.replace(",", "")) for v in s.split(" / "))
    assert largest(init_logits) < 10 < 100 < largest(grown_logits)
    assert float(init_fp32) > 0.9999 and float(grown_fp32) > 0.999 and float(init_bf16) > 0.99
    assert float(grown_bf16) < 0.9


def test_side_by_side_times_each_way_after_a_call_of_its_own(monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_speed
    import types
    calls, now = [], [0.0]
    # a clock that only the ways advance: the medians are exact, whatever the machine's load
    monkeypatch.setattr(bench_speed, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def way(name, seconds):  # slow on a call that follows another way's, like the course step after the default's
        def f():
            slow = bool(calls) and calls[-1] != name
            calls.append(name)
            now[0] += 10.0 if slow else seconds
        return f
    a, b = bench_speed.side_by_side(2, way("a", 1.0), way("b", 2.0))
    assert calls == ["a", "a", "b", "b", "a", "a", "b", "b"]
    assert (a, b) == (1.0, 2.0)


def test_bench_speed_prints_the_side_by_side_table():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_speed.py"), "--data_dir", DATA,
                          "--reps", "1", "--rows", "2", "--questions", "3"],
                         capture_output=True, text=True, check=True).stdout
    header, *rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    # float32's column once, bf16's beside it, whichever of the two is this CPU's default
    assert header.count("float32") == 1 and header.count("bfloat16") == 1, header
    assert [r.split(" | ")[0] for r in rows] == [
        "| pretraining step, vanilla (2 rows)", "| pretraining step, perceiver m=64",
        "| finetuning step, vanilla (2 rows)", "| finetuning step, perceiver m=64",
        "| greedy decoding of 3 dev questions, vanilla (untrained model, all 32 characters)",
        "| greedy decoding of 3 dev questions, perceiver (untrained model, all 32 characters)"]
    for row in rows:  # every ratio is --plain's time over the default's
        cells = row.split(" | ")
        seconds = lambda c: float(c.split()[0]) / (1e3 if c.endswith("ms") else 1)
        assert float(cells[3].rstrip("x")) == pytest.approx(seconds(cells[1]) / seconds(cells[2]), rel=0.1, abs=0.1)


def test_reference_curve_averages_each_epoch_beside_the_reference(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    run_dir = tmp_path / "expt" / "pretrain" / "run"
    writer = SummaryWriter(log_dir=str(run_dir))
    for step in range(7):  # 2 complete epochs of 3 steps, one step of a third
        writer.add_scalar("train/loss", float(step), step)
        writer.add_scalar("train/lr", 0.1 * (step + 1), step)
    writer.close()
    ref = tmp_path / "ref.csv"
    ref.write_text("phase,epoch,mean_loss,lr_after_epoch\npretrain,1,3.5,6e-3\npretrain,2,2.5,6e-3\n"
                   "finetune,1,9.0,6e-4\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "reference_curve.py"), str(run_dir),
                          str(tmp_path / "curve"), "--steps_per_epoch", "3", "--reference", str(ref)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "curve.csv").read_text().splitlines() == [
        "phase,epoch,mean_loss,lr_after_epoch", "pretrain,1,1.0000,3.00e-01", "pretrain,2,4.0000,6.00e-01"]
    assert "| 2 | 4.000 | 2.500 |" in out.stdout
    assert (tmp_path / "curve.png").stat().st_size > 1000
    # a bare GPU machine (bench/gpu_check.sh's pipeline stages) has no matplotlib: the CSV and table still come
    script = os.path.join(ROOT, "bench", "reference_curve.py")
    hidden = ("import runpy, sys; sys.modules['matplotlib'] = None; sys.argv = sys.argv[1:]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", hidden, script, str(run_dir), str(tmp_path / "bare"),
                          "--steps_per_epoch", "3", "--reference", str(ref)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bare.csv").read_text() == (tmp_path / "curve.csv").read_text()
    assert "| 2 | 4.000 | 2.500 |" in out.stdout and "no matplotlib" in out.stdout
    assert not (tmp_path / "bare.png").exists()


def tiny_handout_model(vocab_size, perceiver, plain=False, rope=False):
    """
    bench_speed's handout model shrunk (16 wide; one block, the Perceiver's down, one, up), quick to
    compile, without dropout, so that the compiled step can be held to eager's losses (inductor draws
    its own masks). fast_dropout's 16-bit mask once broke inductor's CPU code in torch 2.13 (SystemError
    under ATEN_CPU_CAPABILITY=avx2); under torch.compile it is nn.Dropout now.
    """
    kw = dict(perceiver=True, bottleneck_dim=8, n_layer=3) if perceiver else dict(n_layer=1)
    return model.GPT(model.GPTConfig(vocab_size, 128, n_head=2, n_embd=16, plain=plain, embd_pdrop=0.0,
                                     resid_pdrop=0.0, attn_pdrop=0.0, rope=rope, **kw))


def test_bench_speed_times_the_compiled_step_beside_eager(monkeypatch, capsys, tmp_path):
    """
    --compile's columns and lines, in process, with a real torch.compile (inductor) of a tiny model
    in every way (the handout model's compile takes minutes on CPU), in run.py's default precision
    here (bf16 or float32, as the CPU has it); --cli's whole commands stubbed: what they would
    report is made up, the table and the lines are checked.
    """
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_speed
    import hardware
    monkeypatch.setattr(bench_speed, "handout_model", tiny_handout_model)
    made_up = {"plain": (8.0, 1.0, [3.0, 2.9], 1.2), "default": (4.0, 2.0, [3.0, 2.8], 2.5),
               "compiled": (6.0, 1.5, [3.01, 2.79], 5.0)}
    calls = []

    def cli(args, cwd, steps_per_epoch=None):
        calls.append(args)
        if args[0] == "evaluate":
            with open(args[args.index("--eval_corpus_path") + 1], encoding="utf-8") as f:
                calls[-1] = args + [f"{len(f.read().splitlines())} questions"]
            return (5.0 if "--plain" in args else 1.0), None, [], None
        assert steps_per_epoch == math.ceil(lines("wiki.txt") / 128)
        return made_up[args[args.index("--tb_expt_name") + 1]]
    monkeypatch.setattr(bench_speed, "cli", cli)
    bench_speed.main(["--data_dir", DATA, "--reps", "1", "--rows", "2", "--questions", "2", "--compile", "--cli",
                      "--cli_epochs", "2"])
    out = capsys.readouterr().out
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in out.splitlines() if r.startswith("| ")]
    head, cells = rows[0], {r[0]: r for r in rows[2:]}
    dtype = hardware.pick_dtype("auto", "cpu")
    assert head[6:] == [f"default compiled, {dtype}", "speed-up", "against eager"]
    for what in ("pretraining step, vanilla (2 rows)", "pretraining step, perceiver m=64"):
        assert len(cells[what]) == 9 and cells[what][6].split()[1] in ("s", "ms") and cells[what][8].endswith("x")
    assert cells["finetuning step, vanilla (2 rows)"][6:] == ["", "", ""]
    vanilla = cells["`run.py pretrain vanilla --max_epochs 2` (whole command; speed-up in steps/s)"]
    assert vanilla[1] == "8.00 s (1.00 steps/s; 1.20 after epoch 1)"
    assert vanilla[6:] == ["6.00 s (1.50 steps/s; 5.00 after epoch 1)", "1.5x", "0.75x"]
    assert cells["`run.py pretrain perceiver --max_epochs 2` (whole command; speed-up in steps/s)"][6:] == ["", "", ""]
    assert "| 2 | 2.900 | 2.800 | 2.790 |" in out  # the per-epoch loss of each way
    short = out.split("\nIn short")[1]
    assert "\n- compiled pretraining step, vanilla: " in short and "\n- compiled pretraining step, perceiver" in short
    assert f"run.py's default here: {dtype}\n" in out
    same = re.search(rf"\n- compiled step, vanilla, 3 steps on one batch without dropout: losses ([\d. ]+) against "
                     rf"eager ([\d. ]+), largest relative difference (\S+): the same within {dtype} rounding\n", short)
    assert same, short
    compiled, eager = ([float(v) for v in same.group(k).split()] for k in (1, 2))
    assert len(compiled) == len(eager) == 3 and eager[2] < eager[0]  # the steps train
    # eager takes 2 sub-batches on CPU, the compiled step the whole batch in fused kernels: rounding only
    # (measured: 0 in float32, 1e-5 in bf16, whose one rounding is 2^-8 = 4e-3)
    assert float(same.group(3)) < (1e-6 if dtype == "float32" else 1e-3), short
    assert "\n- compiled `run.py pretrain vanilla --max_epochs 2`: steps/s after epoch 1 5.00 against eager 2.50 " \
           "(2.00x); whole command 6.00 s against 4.00 s\n" in short
    assert "compiled against eager: largest difference 0.010 over 2 epochs (--plain against eager, another " \
           "dropout stream too: 0.100)" in short
    assert "\n- whole-command evaluate, vanilla: 5.0x" in short
    assert re.search(r"\n- so --compile here: (faster, with the same losses|keep eager \(not faster everywhere\))", short)
    # the compiled command is vanilla's only; --questions reaches the evaluate command too
    assert [a[a.index("--tb_expt_name") + 1] for a in calls if "--compile" in a] == ["compiled"]
    assert [a[-1] for a in calls if a[0] == "evaluate"] == ["2 questions", "2 questions"]


def test_run_curve_reads_epochs_and_the_rate_after_the_first(tmp_path):
    """bench_speed's whole commands: per-epoch loss and steps/s between ends of the bursts that a GPU logs in."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_speed
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(log_dir=str(tmp_path / "run"))
    for step in range(12):  # bursts of 3 steps a second apart, the steps of a burst written together
        writer.add_scalar("train/loss", float(step), step, walltime=100.0 + step // 3 + 0.001 * (step % 3))
    writer.close()
    epochs, rate = bench_speed.run_curve(str(tmp_path / "run"), 4)
    assert epochs == [1.5, 5.5, 9.5]
    assert rate == pytest.approx(3.0)  # steps 5 to 11 from 101.002 s to 103.002 s
    assert bench_speed.run_curve(str(tmp_path / "none"), 4) == ([], None)


def test_reported_rate_is_the_whole_runs(tmp_path):
    """The rate of run.py's closing line, not the early one of its expected-time line (which came first and was
    taken for it in the H100's bench.md)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_speed
    out = subprocess.run([sys.executable, os.path.join(ROOT, "src", "run.py"), "pretrain", "vanilla",
                          os.path.join(DATA, "wiki.txt"), "--writing_params_path", "v.params", "--max_epochs", "1",
                          "--batch_size", "8", "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path)
    # on CPU the loss is read every step: the expected-time line comes after 10 of the 13 (a GPU's, after 25)
    assert out.returncode == 0, out.stderr
    early, whole = re.findall(r"([0-9.]+) steps/s", out.stdout)  # the expected-time line's, then the closing line's
    assert "expected time" in out.stdout.split(early)[0].splitlines()[-1]
    assert bench_speed.reported_rate(out.stdout) == float(whole)
    assert bench_speed.reported_rate("no rate here\n") is None


def test_bisect_default_changes_one_setting_per_variant(tmp_path, monkeypatch, capsys):
    """
    bench/bisect_default.py's variants, set up as on a GPU with bf16 arithmetic (hardware's speed
    settings and precision for cuda, whatever this CPU computes), training stubbed: each one
    differs from the variant it is named after in the one setting its name says, and nothing else.
    """
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bisect_default
    import hardware
    import trainer
    gpu_settings = hardware.speed_settings
    monkeypatch.setattr(hardware, "speed_settings", lambda device, *a, **kw: gpu_settings("cuda", *a, **kw))
    # an H100's choices: float32 by default and with --plain, bf16 when asked
    monkeypatch.setattr(hardware, "pick_dtype",
                        lambda requested, device="cpu", plain=False: "float32" if plain or requested == "auto"
                        else requested)
    cudnn = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", cudnn.append)
    made = {}

    def train(self):
        c = self.config
        made[name] = dict(dtype=c.dtype, fused_adamw=c.fused_adamw, sub_batches=c.sub_batches,
                          device_batches=c.device_batches, log_every=c.log_every, ckpt=c.ckpt_path,
                          attention={m.attention for m in self.raw_model.modules() if hasattr(m, "attention")},
                          compiled=self.model is not self.raw_model, cudnn_sdp=tuple(cudnn))
        cudnn.clear()
    monkeypatch.setattr(trainer.Trainer, "train", train)
    for name in bisect_default.VARIANTS:
        bisect_default.train_variant(name, os.path.join(DATA, "wiki.txt"), str(tmp_path), 1, "cpu", 0)
    assert made["default"] == dict(dtype="float32", fused_adamw=True, sub_batches=1, device_batches=True,
                                   log_every=25, ckpt=None, attention={"auto"}, compiled=False, cudnn_sdp=())

    def changed(a, b):
        return {k for k in made[a] if made[a][k] != made[b][k]}
    assert changed("bf16", "default") == {"dtype"}
    assert changed("bf16_sdpa", "bf16") == {"attention"} and made["bf16_sdpa"]["attention"] == {"sdpa"}
    assert changed("bf16_sdpa_no_cudnn", "bf16_sdpa") == {"cudnn_sdp"}
    assert made["bf16_sdpa_no_cudnn"]["cudnn_sdp"] == (False,)
    assert changed("bf16_dataloader", "bf16") == {"device_batches"}
    assert changed("bf16_torch_adamw", "bf16") == {"fused_adamw"}
    assert changed("course", "default") == {"fused_adamw", "device_batches", "attention"}
    assert made["course"]["attention"] == {"explicit"}
    assert changed("course_bf16", "course") == {"dtype"}
    assert changed("default_compiled", "default") == {"compiled"}


def test_bisect_default_tabulates_each_variant_beside_the_references(tmp_path):
    wiki = tmp_path / "wiki.txt"
    with open(os.path.join(DATA, "wiki.txt"), encoding="utf-8") as f:
        wiki.write_text("".join(f.readlines()[:40]), encoding="utf-8")  # one step an epoch
    ref = tmp_path / "ref_vanilla_course_s0.csv"
    ref.write_text("phase,epoch,mean_loss,lr_after_epoch\npretrain,1,4.0,3e-3\npretrain,2,3.0,6e-3\n")
    out = tmp_path / "out"
    script = os.path.join(ROOT, "bench", "bisect_default.py")
    run = subprocess.run([sys.executable, script, str(wiki), str(out), "--epochs", "1", "--device", "cpu",
                          "--variants", "course", "bf16_torch_adamw", "--jobs", "2", "--reference", str(ref)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    for name in ("course", "bf16_torch_adamw"):
        rows = (out / f"{name}.csv").read_text().splitlines()
        assert rows[0] == "phase,epoch,mean_loss,lr_after_epoch" and len(rows) == 2
        # 40 rows of 128 characters: half the warm-up's 512 x 20 tokens
        assert rows[1].startswith("pretrain,1,") and 2.9e-3 < float(rows[1].split(",")[3]) < 3.2e-3
        loss = float(rows[1].split(",")[2])
        assert 3 < loss < 5
        assert re.search(rf"^\| 1 \| .*{loss:.3f}.* \| 4\.000 \|$", run.stdout, re.M)
        verdict = "with the references" if loss - 4.0 < 0.15 else "off the references"
        assert re.search(rf"^- {name}: epoch 1 loss {loss:.3f}, [+-][\d.]+ from .*{verdict}", run.stdout, re.M)
    assert (out / "bisect.md").read_text() in run.stdout
    # a variant that did not finish is named
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bisect_default
    text = bisect_default.table(str(out), ["course", "bf16"], [str(ref)], 1)
    assert "- course: epoch 1" in text and text.endswith("- did not finish (see their .log): bf16\n")
