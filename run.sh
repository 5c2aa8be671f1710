#!/usr/bin/env bash
# The assignment's commands, one subcommand per part of the handout.
#
#   bash run.sh                      set up .venv, run the whole pipeline on the
#                                    project's synthetic corpus (data/), print a table
#   bash run.sh test                 set up .venv with the test tools, run the test suite
#   bash run.sh london [DATA]        the London baseline on DATA/birth_dev.tsv
#   bash run.sh vanilla_nopretrain [DATA]   part (d): finetune from scratch, evaluate
#   bash run.sh vanilla_pretrain [DATA]     part (f): pretrain, finetune, evaluate
#   bash run.sh perceiver_pretrain [DATA]   part (g): the same with the Perceiver, m = 64
#   bash run.sh rope_pretrain [DATA]        the 2024-25 handout's part: the same with rope
#   bash run.sh all [DATA]           the 2023 handout's four parts, then collect_submission.sh
#   bash run.sh all_2024 [DATA]      the 2024-25 handout's (rope in place of the Perceiver), then the same
#
# DATA is the folder of the course's wiki.txt and three TSVs (default: $A5_DATA_DIR,
# else the current folder, as in the handout's commands); a part stops at once,
# naming the files it lacks. Only the demo reads the synthetic corpus in data/.
# The handout's parts write their params and predictions into the current
# folder, as the course's commands do. Extra flags for every training command can
# be given in $TRAIN_FLAGS (e.g. TRAIN_FLAGS="--max_epochs 1" for a quick try),
# for the pretraining commands alone in $PRETRAIN_FLAGS, and for the finetuning
# commands alone in $FINETUNE_FLAGS.
# Set $PYTHON to use an interpreter you already set up (conda, Colab) instead of .venv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

setup() {  # $1: requirements file
  if [ -n "${PYTHON:-}" ]; then return; fi
  local py="$here/.venv/bin/python" venv_flags=""
  if [ ! -x "$py" ] || ! "$py" -c "import torch, tqdm, tensorboard" 2>/dev/null; then
    echo "setting up $here/.venv" >&2
    if ! python3 -c "import sys; sys.exit(sys.version_info < (3, 10))" 2>/dev/null; then
      echo "run.sh: Python 3.10 or newer is needed as python3 (or set PYTHON to one that has torch)" >&2; exit 1
    fi
    # a torch that python3 already has (Colab, a Deep Learning VM's CUDA build) is kept, not downloaded again
    if python3 -c "import torch" 2>/dev/null; then venv_flags="--system-site-packages"; fi
    if ! python3 -m venv $venv_flags "$here/.venv"; then
      echo "run.sh: python3 -m venv failed: install python3-venv (Debian, Ubuntu: sudo apt install python3-venv), or set PYTHON" >&2; exit 1
    fi
    "$py" -m pip install -q --upgrade pip
  fi
  if ! "$py" -c "import torch" 2>/dev/null && ! nvidia-smi -L >/dev/null 2>&1; then
    # no torch yet and no NVIDIA GPU: the release the tests ran with, whose CPU build pip finds on
    # disk here (CI), rather than the newest release (on Linux a CUDA build of several GB)
    "$py" -m pip install -q -r "$here/$1" -c "$here/constraints-cpu.txt"
  else
    "$py" -m pip install -q -r "$here/$1"
  fi
  PYTHON="$py"
}

need_data() {  # $1: a handout part; stops before any set-up if DATA lacks a file the part reads
  local f missing=""
  local files="wiki.txt birth_places_train.tsv birth_dev.tsv birth_test_inputs.tsv"
  if [ "$1" = london ]; then files="birth_dev.tsv"; fi
  for f in $files; do [ -f "$D/$f" ] || missing="${missing:+$missing, }$f"; done
  if [ -n "$missing" ]; then
    echo "run.sh $1: no $missing in $D: give the course data's folder (bash run.sh $1 DATA_DIR) or set A5_DATA_DIR" >&2
    exit 1
  fi
}

run() { echo "+ $*" >&2; "$PYTHON" "$@"; }

london() {
  run "$here/london_baseline.py" --eval_corpus_path "$D/birth_dev.tsv"
}

vanilla_nopretrain() {
  run "$here/src/run.py" finetune vanilla "$D/wiki.txt" --writing_params_path vanilla.model.params \
    --finetune_corpus_path "$D/birth_places_train.tsv" ${TRAIN_FLAGS:-} ${FINETUNE_FLAGS:-}
  run "$here/src/run.py" evaluate vanilla "$D/wiki.txt" --reading_params_path vanilla.model.params \
    --eval_corpus_path "$D/birth_dev.tsv" --outputs_path vanilla.nopretrain.dev.predictions
  run "$here/src/run.py" evaluate vanilla "$D/wiki.txt" --reading_params_path vanilla.model.params \
    --eval_corpus_path "$D/birth_test_inputs.tsv" --outputs_path vanilla.nopretrain.test.predictions
}

pretrain_finetune_evaluate() {  # $1: vanilla or perceiver; $2: pretrain-only flags; $3...: variant flags
  local v=$1 pt=$2; shift 2
  # flags the user gives replace the handout's, rather than being passed twice
  case " ${TRAIN_FLAGS:-} ${PRETRAIN_FLAGS:-} " in *" --pretrain_lr "*|*" --pretrain_lr="*) pt="" ;; esac
  run "$here/src/run.py" pretrain "$v" "$D/wiki.txt" "$@" $pt --writing_params_path "$v.pretrain.params" \
    ${TRAIN_FLAGS:-} ${PRETRAIN_FLAGS:-}
  run "$here/src/run.py" finetune "$v" "$D/wiki.txt" "$@" --reading_params_path "$v.pretrain.params" \
    --writing_params_path "$v.finetune.params" --finetune_corpus_path "$D/birth_places_train.tsv" \
    ${TRAIN_FLAGS:-} ${FINETUNE_FLAGS:-}
  run "$here/src/run.py" evaluate "$v" "$D/wiki.txt" "$@" --reading_params_path "$v.finetune.params" \
    --eval_corpus_path "$D/birth_dev.tsv" --outputs_path "$v.pretrain.dev.predictions"
  run "$here/src/run.py" evaluate "$v" "$D/wiki.txt" "$@" --reading_params_path "$v.finetune.params" \
    --eval_corpus_path "$D/birth_test_inputs.tsv" --outputs_path "$v.pretrain.test.predictions"
}

vanilla_pretrain() { pretrain_finetune_evaluate vanilla ""; }
perceiver_pretrain() { pretrain_finetune_evaluate perceiver "--pretrain_lr 6e-3" --bottleneck_dim 64; }
rope_pretrain() { pretrain_finetune_evaluate rope ""; }

demo() {
  # The whole pipeline on the synthetic corpus (100 people), shortened to minutes.
  # A short pretraining needs more, smaller steps (batches of 32 rows) and a peak
  # lr of 1e-3: under the course's own rules too, 80-100 epochs at 2e-3 to 6e-3
  # stored none of the birthplaces, and 100 epochs at 1e-3 a fifth of them; 200 at
  # 1e-3 store 80%. 50 training questions are 1 step per epoch at the handout's
  # 256 rows: finetuning takes batches of 16 at a gentler lr (both finetunes
  # alike) to read the stored birthplaces out (results/README.md, "Demo").
  D="$here/data"
  mkdir -p "$here/out/demo" && cd "$here/out/demo"
  local log="$here/out/demo/demo.log"
  : > "$log"
  local start=$SECONDS
  export PRETRAIN_FLAGS="${PRETRAIN_FLAGS:---pretrain_lr 1e-3 --batch_size 32 --max_epochs 200 --final_epochs 200}"
  export FINETUNE_FLAGS="${FINETUNE_FLAGS:---batch_size 16 --finetune_lr 5e-5}"
  { london; vanilla_nopretrain; vanilla_pretrain; perceiver_pretrain; rope_pretrain; } 2>&1 | tee "$log" |
    grep -E "^\+|Correct|trained|decoded"
  echo
  echo "dev accuracy on the synthetic corpus ($((SECONDS - start)) s in all; log: out/demo/demo.log)"
  "$PYTHON" - "$log" <<'PY'
import re, sys
names = ["London baseline", "vanilla, no pretraining", "vanilla, pretrain + finetune", "perceiver (m=64), pretrain + finetune",
         "rope, pretrain + finetune"]
scores = re.findall(r"^Correct: (\S+) out of (\S+): (\S+)%", open(sys.argv[1]).read(), re.M)
print("| run | dev accuracy |\n| --- | --- |")
for name, (c, t, p) in zip(names, scores):
    print(f"| {name} | {float(p):.1f}% ({int(float(c))}/{int(float(t))}) |")
PY
}

cmd="${1:-demo}"
# the handout's parts never fall back to data/: that is the demo's synthetic corpus
D="${2:-${A5_DATA_DIR:-$PWD}}"
case "$cmd" in
  demo) setup requirements.txt; demo ;;
  test) setup requirements-dev.txt; cd "$here"; "$PYTHON" -m pytest -q tests ;;
  london|vanilla_nopretrain|vanilla_pretrain|perceiver_pretrain|rope_pretrain) need_data "$cmd"; setup requirements.txt; "$cmd" ;;
  all) need_data all; setup requirements.txt; london; vanilla_nopretrain; vanilla_pretrain; perceiver_pretrain
       bash "$here/collect_submission.sh" "$PWD" ;;
  all_2024) need_data all_2024; setup requirements.txt; london; vanilla_nopretrain; vanilla_pretrain; rope_pretrain
       bash "$here/collect_submission.sh" "$PWD" ;;
  *) echo "run.sh: unknown subcommand '$cmd' (demo, test, london, vanilla_nopretrain, vanilla_pretrain, perceiver_pretrain, rope_pretrain, all, all_2024)" >&2; exit 2 ;;
esac
