"""A student's path: run.sh's handout parts find the course data or stop, its set-up keeps a
torch that is there (or takes the tested CPU build), collect_submission.sh checks what it zips,
and the dependency files install on real machines."""
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile

import pytest
import torch

import model
from conftest import ROOT, small_config

COURSE_FILES = ["wiki.txt", "birth_places_train.tsv", "birth_dev.tsv", "birth_test_inputs.tsv"]
PARTS = ["london", "vanilla_nopretrain", "vanilla_pretrain", "perceiver_pretrain", "rope_pretrain", "all", "all_2024"]


def repo_copy(tmp_path):
    """The files run.sh needs, in tmp_path/repo (its set-up would write repo/.venv)."""
    repo = tmp_path / "repo"
    for name in ("src", "data"):
        shutil.copytree(os.path.join(ROOT, name), repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("run.sh", "london_baseline.py", "collect_submission.sh", "requirements.txt",
                 "requirements-dev.txt", "constraints-cpu.txt"):
        shutil.copy(os.path.join(ROOT, name), repo / name)
    return repo


def stub(folder, name, body):
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def env_without(*names, **extra):
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


# --- run.sh: the handout's parts read the course data, never data/ -----------------------------

@pytest.mark.parametrize("part", PARTS)
def test_a_part_without_course_data_stops_before_anything(tmp_path, part):
    repo = repo_copy(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    # a python3 that says when it is called: the part must stop before setting anything up
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "python3", 'echo "python3 was called" >&2; exit 1\n')
    env = env_without("A5_DATA_DIR", "PYTHON", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["bash", str(repo / "run.sh"), part], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode != 0
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    files = ["birth_dev.tsv"] if part == "london" else COURSE_FILES
    assert f"no {', '.join(files)} in {os.path.realpath(work)}" in lines[0] and "A5_DATA_DIR" in lines[0], lines[0]
    assert out.stdout == "" and not (repo / ".venv").exists() and os.listdir(work) == []


def test_a_part_names_only_the_files_it_lacks(tmp_path):
    repo = repo_copy(tmp_path)
    data = tmp_path / "course"
    data.mkdir()
    (data / "wiki.txt").write_text("Ada. A person.\n")
    env = env_without("PYTHON", A5_DATA_DIR=str(data))
    out = subprocess.run(["bash", str(repo / "run.sh"), "vanilla_pretrain"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert f"no birth_places_train.tsv, birth_dev.tsv, birth_test_inputs.tsv in {data}:" in out.stderr, out.stderr


def test_a_part_finds_its_data_given_in_env_or_folder(tmp_path):
    """The folder given, else A5_DATA_DIR, else the current folder: the course's commands' own rule."""
    repo = repo_copy(tmp_path)
    synthetic = repo / "data"
    empty = tmp_path / "empty"
    empty.mkdir()
    here = tmp_path / "here"
    here.mkdir()
    with open(here / "birth_dev.tsv", "w", encoding="utf-8") as f:  # 3 questions in the current folder
        f.write("".join((synthetic / "birth_dev.tsv").read_text(encoding="utf-8").splitlines(True)[:3]))

    def london(*args, **env):
        out = subprocess.run(["bash", str(repo / "run.sh"), "london", *args], cwd=here,
                             env=env_without("A5_DATA_DIR", PYTHON=sys.executable, **env), capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return re.search(r"out of (\S+):", out.stdout).group(1)

    assert london() == "3.0"
    assert london(A5_DATA_DIR=str(synthetic)) == "50.0"
    assert london(str(synthetic), A5_DATA_DIR=str(empty)) == "50.0"


# --- run.sh's set-up: which torch a fresh .venv gets ----------------------------------------------

STUB_PYTHON = r'''echo "$0 $*" >> "$STUB_LOG"
case "$0" in */.venv/bin/python) torch="$STUB_VENV_TORCH" ;; *) torch="$STUB_SYSTEM_TORCH" ;; esac
case "$*" in
  "-m venv "*) [ -z "${STUB_NO_VENV:-}" ] || { echo "ensurepip is not available" >&2; exit 1; }
               dir="${@: -1}"; mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python" ;;
  *"import torch"*) exit "$torch" ;;
  *version_info*) exit "${STUB_OLD:-0}" ;;
esac
exit 0
'''


def fake_setup(tmp_path, gpu=False, system_torch=False, **env):
    """run.sh london with stubs for python3 (and its venv) and nvidia-smi; returns (result, log lines)."""
    repo = repo_copy(tmp_path)
    bin_dir = tmp_path / "bin"
    stub(bin_dir, "python3", STUB_PYTHON)
    stub(bin_dir, "nvidia-smi", "exit 0\n" if gpu else "exit 9\n")
    log = tmp_path / "log"
    log.write_text("")
    env = env_without("PYTHON", A5_DATA_DIR=str(repo / "data"), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                      STUB_LOG=str(log), STUB_VENV_TORCH="1", STUB_SYSTEM_TORCH="0" if system_torch else "1", **env)
    out = subprocess.run(["bash", str(repo / "run.sh"), "london"], cwd=tmp_path, env=env, capture_output=True, text=True)
    calls = [l.replace(str(repo), "REPO").replace(str(bin_dir), "BIN") for l in log.read_text().splitlines()]
    return out, calls


def pip_installs(calls):
    return [c for c in calls if " -m pip install -q -r " in c]


def test_fresh_setup_without_a_gpu_takes_the_tested_cpu_torch(tmp_path):
    out, calls = fake_setup(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "BIN/python3 -m venv REPO/.venv" in calls
    assert pip_installs(calls) == ["REPO/.venv/bin/python -m pip install -q -r REPO/requirements.txt "
                                   "-c REPO/constraints-cpu.txt"], calls
    assert calls[-1].startswith("REPO/.venv/bin/python REPO/london_baseline.py --eval_corpus_path")


def test_fresh_setup_with_a_gpu_leaves_torch_to_pip(tmp_path):
    out, calls = fake_setup(tmp_path, gpu=True)
    assert out.returncode == 0, out.stderr
    assert pip_installs(calls) == ["REPO/.venv/bin/python -m pip install -q -r REPO/requirements.txt"], calls


def test_fresh_setup_keeps_the_torch_python3_has(tmp_path):
    """Colab, a Deep Learning VM: the venv sees the installed (CUDA) torch, which satisfies the lower bound."""
    out, calls = fake_setup(tmp_path, gpu=True, system_torch=True)
    assert out.returncode == 0, out.stderr
    assert "BIN/python3 -m venv --system-site-packages REPO/.venv" in calls


def test_setup_says_what_is_missing(tmp_path):
    out, calls = fake_setup(tmp_path, STUB_NO_VENV="1")
    assert out.returncode != 0 and "install python3-venv" in out.stderr and not pip_installs(calls)
    out, calls = fake_setup(tmp_path / "old", STUB_OLD="1")
    assert out.returncode != 0 and "Python 3.10 or newer" in out.stderr and not any("venv" in c for c in calls)


# --- collect_submission.sh checks what it zips ----------------------------------------------------

PREDICTIONS = {"vanilla.nopretrain.dev.predictions": 500, "vanilla.nopretrain.test.predictions": 437,
               "vanilla.pretrain.dev.predictions": 500, "vanilla.pretrain.test.predictions": 437,
               "perceiver.pretrain.dev.predictions": 500, "perceiver.pretrain.test.predictions": 437}


@pytest.fixture(scope="module")
def state_dicts():
    def course(config):  # the course's vocabulary: collect_submission.sh checks the embedding's 256 rows
        config.vocab_size = 256
        return config
    vanilla = model.GPT(course(small_config())).state_dict()
    perceiver = model.GPT(course(small_config(perceiver=True, bottleneck_dim=64, block_size=64))).state_dict()
    perceiver32 = model.GPT(course(small_config(perceiver=True, bottleneck_dim=32, block_size=64))).state_dict()
    rope = model.GPT(course(small_config(rope=True))).state_dict()
    return {"vanilla": vanilla, "perceiver": perceiver, "perceiver32": perceiver32, "rope": rope}


def write_outputs(d, sds, dev=500, test=437, last="perceiver", **params):
    """The nine outputs in d (last: perceiver, the 2023 handout's, or rope, the 2024-25 one's); params maps
    a params file to a key of sds (default: its own variant)."""
    for name, n in PREDICTIONS.items():
        (d / name.replace("perceiver", last)).write_text("London\n" * (dev if n == 500 else test))
    for name in ("vanilla.model.params", "vanilla.finetune.params", f"{last}.finetune.params"):
        torch.save(sds[params.get(name.replace(".", "_"), name.split(".")[0])], d / name)


def collect(d, **env):
    out = subprocess.run(["bash", os.path.join(ROOT, "collect_submission.sh"), str(d)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=sys.executable, **env))
    return out, [l for l in out.stderr.splitlines() if l.strip()]


def test_collect_accepts_the_course_outputs(tmp_path, state_dicts):
    write_outputs(tmp_path, state_dicts)
    (tmp_path / "vanilla.pretrain.dev.predictions").write_text("London\n" * 499 + "Paris")  # no final newline
    out, problems = collect(tmp_path)
    assert out.returncode == 0 and problems == [], out.stderr
    names = zipfile.ZipFile(tmp_path / "assignment5.zip").namelist()
    assert set(PREDICTIONS) < set(names) and "perceiver.finetune.params" in names and "src/run.py" in names


def test_collect_refuses_other_line_counts(tmp_path, state_dicts):
    write_outputs(tmp_path, state_dicts, dev=50, test=10)  # the synthetic corpus's
    (tmp_path / "vanilla.pretrain.dev.predictions").write_text("London\n" * 499)
    out, problems = collect(tmp_path)
    assert out.returncode != 0
    assert len(problems) == 6, problems
    assert "collect_submission.sh: vanilla.nopretrain.dev.predictions: 50 lines, the course's dev set has 500" in out.stderr
    assert "collect_submission.sh: perceiver.pretrain.test.predictions: 10 lines, the course's test set has 437" in out.stderr
    assert "vanilla.pretrain.dev.predictions: 499 lines" in out.stderr
    assert len(zipfile.ZipFile(tmp_path / "assignment5.zip").namelist()) > 9  # written all the same


def test_collect_refuses_params_of_the_wrong_variant(tmp_path, state_dicts):
    write_outputs(tmp_path, state_dicts, vanilla_finetune_params="perceiver", perceiver_finetune_params="vanilla")
    (tmp_path / "vanilla.model.params").write_bytes((tmp_path / "vanilla.finetune.params").read_bytes()[:5000])
    out, problems = collect(tmp_path)
    assert out.returncode != 0 and len(problems) == 3, out.stderr
    assert "vanilla.model.params: not a readable params file" in out.stderr
    assert "vanilla.finetune.params: perceiver params, not the vanilla model's" in out.stderr
    assert "perceiver.finetune.params: vanilla params, not the perceiver model's" in out.stderr


def test_collect_takes_the_2024_handouts_rope_outputs(tmp_path, state_dicts):
    """rope's three outputs in place of the Perceiver's, with the same checks."""
    write_outputs(tmp_path, state_dicts, last="rope")
    out, problems = collect(tmp_path)
    assert out.returncode == 0 and problems == [], out.stderr
    assert "rope's outputs in place of the Perceiver's (the 2024-25 handout)" in out.stdout
    names = zipfile.ZipFile(tmp_path / "assignment5.zip").namelist()
    assert {"rope.finetune.params", "rope.pretrain.dev.predictions", "rope.pretrain.test.predictions"} < set(names)
    torch.save(state_dicts["vanilla"], tmp_path / "rope.finetune.params")
    (tmp_path / "rope.pretrain.test.predictions").write_text("London\n" * 10)
    os.remove(tmp_path / "vanilla.model.params")
    out, problems = collect(tmp_path)
    assert out.returncode != 0 and problems == [
        "collect_submission.sh: missing outputs: vanilla.model.params",
        "collect_submission.sh: rope.pretrain.test.predictions: 10 lines, the course's test set has 437 questions "
        "(predictions made on another corpus?)",
        "collect_submission.sh: rope.finetune.params: vanilla params, not the rope model's"], problems


def test_collect_refuses_a_perceiver_of_another_bottleneck(tmp_path, state_dicts):
    """run.py's default --bottleneck_dim is 32; the handout trains with 64."""
    write_outputs(tmp_path, state_dicts, perceiver_finetune_params="perceiver32")
    torch.save({"just": "a dict"}, tmp_path / "vanilla.model.params")
    out, problems = collect(tmp_path)
    assert out.returncode != 0 and len(problems) == 2, out.stderr
    assert "perceiver.finetune.params: a Perceiver whose down_block.C is (1, 32, 32): the handout's bottleneck is m = 64" \
        in out.stderr
    assert "vanilla.model.params: not a model's state_dict" in out.stderr


def test_collect_names_missing_outputs(tmp_path, state_dicts):
    write_outputs(tmp_path, state_dicts)
    os.remove(tmp_path / "vanilla.model.params")
    out, problems = collect(tmp_path)
    assert out.returncode != 0 and problems == ["collect_submission.sh: missing outputs: vanilla.model.params"]


def test_collect_without_torch_says_the_params_were_not_checked(tmp_path, state_dicts):
    write_outputs(tmp_path, state_dicts, vanilla_model_params="perceiver")
    no_torch = tmp_path / "no_torch"
    no_torch.mkdir()
    (no_torch / "torch.py").write_text("raise ImportError('no torch here')\n")
    out, problems = collect(tmp_path, PYTHONPATH=str(no_torch))
    assert out.returncode == 0 and len(problems) == 1 and "the params files were not checked" in problems[0], out.stderr


# --- the dependency files ----------------------------------------------------------------------------

def requirement_lines(name):
    with open(os.path.join(ROOT, name)) as f:
        return [l.split("#")[0].strip() for l in f if l.split("#")[0].strip()]


def release(version):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version).groups(default="0"))


def test_torch_has_a_tested_lower_bound_and_a_cpu_pin():
    torch_reqs = [l for l in requirement_lines("requirements.txt") if re.match(r"torch\b", l)]
    assert len(torch_reqs) == 1 and re.fullmatch(r"torch>=[\d.]+", torch_reqs[0]), torch_reqs  # no ==, no upper cap
    bound = torch_reqs[0].split(">=")[1]
    assert requirement_lines("constraints-cpu.txt") == [f"torch=={bound}"]  # the bound is the release tested
    assert release(torch.__version__) >= release(bound)


def test_environment_yml_uses_conda_forge_only():
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    assert set(env) == {"name", "channels", "dependencies"} and env["name"] == "a5"
    assert env["channels"] == ["conda-forge", "nodefaults"]
    deps = env["dependencies"]
    python = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert len(python) == 1 and release(python[0].split("=")[1]) >= (3, 10)
    assert "pip" in deps and {"pip": ["-r requirements.txt"]} in deps  # the same packages as pip's set-up


def test_ci_installs_from_scratch():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "rm -rf .venv" in ci and "bash run.sh test" in ci
