#!/usr/bin/env bash
# Everything a lent GPU should measure for this project, as one prepared command that runs
# unattended: a lent GPU is short (15 minutes of device time a session, start-up included)
# and comes by chance, so nothing is left to type once it is there.
#
#   bash bench/gpu_check.sh DATA REF [ROOT]              # results in ROOT/<card> (ROOT: results/gpu)
#   bash bench/gpu_check.sh --wait DEST SECONDS [ROOT]   # wait for a detached run, pack its results into DEST
#
# DATA holds wiki.txt and the three TSVs; REF the reference loss curves (the ref_*.csv of
# ../shared/reference); <card> is the GPU's name made safe for a file name
# (NVIDIA_H200), or cpu. Stages, in priority order (a-e), each timed; a failing stage is
# recorded and the others still run; the exit is non-zero if any failed:
#   probe     (first, ~30 s) one short pretraining alone, then PROBE_RUNS at once: do runs side
#             by side keep their speed (a handout step is bound by the host, which has many
#             cores)? Sets how many pipelines run at once (parallel.txt: PROBE_RUNS if each kept
#             70% of the lone run's steps/s, else 2)
#   a tests   the CUDA-only tests (pytest -k cuda: training steps without host waits, the
#             attention's mask corners and dropout masks for each of SDPA's kernels, decoding
#             layouts), beside the pipelines; the torch, CUDA and cuDNN versions are in env.txt
#     kernels the kernels of one profiled training step and one evaluation step of the default
#             path, the attention's marked (kernels.md): training must run none of SDPA's
#   b vanilla, perceiver   the handout's full pipeline on the default path (bench/pipeline.sh:
#             pretrain 650 epochs, finetune, evaluate dev and test), in the background from the
#             start; then each one's per-epoch loss beside the reference curves
#             (bench/reference_curve.py: loss_<stage>.csv/.md/.png) and its dev accuracy
#   c bisect  bench/bisect_default.py: the first BISECT_EPOCHS pretraining epochs of the variants
#             that decide whether bf16 can be the GPU default (bf16 with the explicit attention,
#             bf16 through SDPA with cuDNN's attention disabled, bf16 through SDPA as the failing
#             H100 run), all at once, beside the reference curves (bisect/bisect.md)
#     rope, recipe   the 2024 handout's rope pipeline, and the best recipe
#             (results/recipes/: RECIPE_VARIANT with RECIPE_FLAGS, DATA/ meaning the data), after
#             the default's pipelines, for their final accuracy on a GPU
#   d compiled  the vanilla pipeline with --compile, its loss beside the eager one's (vanilla)
#   e bench   bench_speed.py --cli --cli_epochs 10 --compile (--plain against the default, the
#             compiled step against eager) once the pipelines are done: on a GPU shared with
#             them the speed-ups would measure the sharing as much as the code
# In ROOT/<card>: summary.md (the table printed at the end), commands.txt, env.txt, log.txt,
# <stage>.log, probe.md, kernels.md, pipelines/<stage>/ (pipeline.sh's folder), loss_<stage>.*,
# bisect/, bench.md. Rerun with the same ROOT to continue: stages that ended ok are kept
# (delete stages/NAME.status to redo one), and the pipelines resume from their checkpoints.
#
# Knobs (environment): DEVICE (cuda; cpu for a tiny check), STAGES (all), PRETRAIN_EPOCHS
# (the handout's), FINETUNE_EPOCHS (the handout's), PROBE_RUNS (4), PROBE_EPOCHS (6),
# BISECT_EPOCHS (50), BISECT_VARIANTS (bf16 bf16_sdpa_no_cudnn bf16_sdpa), RECIPE_VARIANT,
# RECIPE_FLAGS, BENCH_ARGS ("--reps 3 --cli --cli_epochs 10 --compile"), PYTHON (.venv's if
# there, else python3), WHEELS (.whl: pytest's wheels, used if pytest is missing).
# A tiny run on CPU, as tests/test_gpu_check.py makes it:
#   DEVICE=cpu PRETRAIN_EPOCHS=2 FINETUNE_EPOCHS=1 PROBE_RUNS=2 PROBE_EPOCHS=1 BISECT_EPOCHS=1 \
#     BENCH_ARGS="--reps 1 --rows 2 --questions 2" bash bench/gpu_check.sh data ../shared/reference /tmp/gpu
#
# On a lent GPU (results/README.md, "On a GPU", has the whole procedure). Here, once: the data
# and the curves into a git-ignored folder that the device call carries (../shared does not
# travel), and pytest's wheels in case the machine lacks pytest:
#   mkdir -p .gpu_data && cp -r ../shared/data ../shared/reference .gpu_data/
#   .venv/bin/python -m pip download --only-binary=:all: -d .whl pytest
# Device call 1 (carry .gpu_data and .whl; timeout_s 600): the run detached (setsid), so that
# it outlives the call, then wait for it up to 540 s, packing its results into $OUT every 30 s:
#   mkdir -p /tmp/gpu && setsid nohup bash bench/gpu_check.sh .gpu_data/data .gpu_data/reference /tmp/gpu \
#     > /tmp/gpu/launch.log 2>&1 < /dev/null & bash bench/gpu_check.sh --wait "$OUT" 540 /tmp/gpu
# If it says "still running", device call 2 at once (the machine goes back 30 s after a call),
# no carry, SECONDS = the device time left less a minute:
#   bash bench/gpu_check.sh --wait "$OUT" SECONDS /tmp/gpu
# The results stay outside the repo there (/tmp/gpu), where the next call's copy of the
# working tree cannot touch them.
set -uo pipefail  # no -e: a failing stage is recorded, and the others still run
here="$(cd "$(dirname "$0")/.." && pwd)"
self="$here/bench/gpu_check.sh"
helper="$here/bench/gpu_check.py"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$here/.venv/bin/python" ]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON
PY="$PYTHON"

state() {  # the state of stage $2 in results folder $1 (ok, skipped, FAILED, running, waiting), or nothing
  cut -d' ' -f1 "$1/stages/$2.status" 2>/dev/null
}

results_dirs() {  # the results folders in $1: $1 itself, or its subfolders that have stages/
  if [ -d "$1/stages" ]; then echo "$1"; return; fi
  local d
  for d in "$1"/*/; do if [ -d "$d/stages" ]; then echo "${d%/}"; fi; done
}

PIPELINES="vanilla perceiver rope recipe compiled"  # in priority order
variant_of() {  # the run.py variant of pipeline stage $1
  case $1 in
    compiled) echo vanilla ;;
    recipe) echo "${RECIPE_VARIANT:-rope}" ;;
    *) echo "$1" ;;
  esac
}

state_file() {  # what a later session needs to continue pipeline $2 in folder $1 (params are not packed)
  local p=$1 v f
  v=$(variant_of "$2")
  for f in "$v.finetune.params" "$v.pretrain.params" "$v.pretrain.params.ckpt"; do
    if [ -f "$p/$f" ]; then echo "$p/$f"; return; fi
  done
}

pack() {  # DEST ROOT FINAL: each results folder as DEST/gpu_check_<card>.tgz (no params) and its summary
  local dest=$1 root=$2 final=$3 r c v s
  for r in $(results_dirs "$root"); do
    c=$(basename "$r")
    "$PY" "$helper" summary "$r" > /dev/null 2>&1
    local skip=(--exclude='*.params' --exclude='*.ckpt' --exclude='*.ckpt.*' --exclude='*.tmp')
    tar -czf "$dest/.pack.tgz" "${skip[@]}" -C "$(dirname "$r")" "$c" 2>/dev/null
    if [ "$(stat -c %s "$dest/.pack.tgz")" -gt $((15 * 1024 * 1024)) ]; then
      # files come back from the device at up to 16 MiB each: drop the TensorBoard events and progress bars
      tar -czf "$dest/.pack.tgz" "${skip[@]}" --exclude=expt --exclude=last.err -C "$(dirname "$r")" "$c" 2>/dev/null
    fi
    mv "$dest/.pack.tgz" "$dest/gpu_check_$c.tgz"
    if [ -f "$r/summary.md" ]; then cp "$r/summary.md" "$dest/summary_$c.md"; fi
    if [ "$final" = 1 ]; then
      # an unfinished pipeline: its checkpoint in pieces of 15 MiB, one pipeline's only (about 40 MB;
      # 64 MiB come back in all), so that a later session can carry it back and resume
      rm -f "$dest"/*.part[0-9]
      for v in $PIPELINES; do
        case $(state "$r" $v) in ""|ok) continue ;; esac
        s=$(state_file "$r/pipelines/$v" "$v")
        if [ -n "$s" ]; then split -b 15M -d -a 1 "$s" "$dest/$(basename "$s").part"; break; fi
      done
    fi
  done
  if [ -f "$root/launch.log" ]; then cp "$root/launch.log" "$dest/launch.log"; fi
}

if [ "${1:-}" = --wait ]; then
  [ $# -ge 3 ] || { echo "usage: bash bench/gpu_check.sh --wait DEST SECONDS [ROOT]" >&2; exit 2; }
  dest=$2; end=$((SECONDS + $3)); root=${4:-$here/results/gpu}
  mkdir -p "$dest" "$root"
  alive() { [ -f "$root/gpu_check.pid" ] && kill -0 "$(cat "$root/gpu_check.pid")" 2>/dev/null; }
  # the run writes its pid first thing (and removes it at its end): give a run started a moment ago the time to
  while [ ! -f "$root/gpu_check.pid" ] && [ $SECONDS -lt $end ] && [ $SECONDS -lt 30 ]; do sleep 1; done
  while alive && [ $SECONDS -lt $end ]; do
    pack "$dest" "$root" 0
    next=$((SECONDS + 30))
    while alive && [ $SECONDS -lt $next ] && [ $SECONDS -lt $end ]; do sleep 2; done
  done
  pack "$dest" "$root" 1
  for r in $(results_dirs "$root"); do cat "$r/summary.md"; done
  ls -l "$dest"
  if alive; then
    echo "still running: call bash bench/gpu_check.sh --wait DEST SECONDS $root again"
    exit 3
  fi
  if [ -z "$(results_dirs "$root")" ]; then
    echo "no results in $root; its launch.log:"
    tail -n 20 "$root/launch.log" 2>/dev/null
    exit 1
  fi
  for r in $(results_dirs "$root"); do
    grep -q "exit 0" "$r/finished" 2>/dev/null || { echo "the run failed or was cut off: see above"; exit 1; }
  done
  exit 0
fi

if [ "${1:-}" = --stage ]; then
  # one stage, run by the main process below under a time limit, with its variables exported
  stage=$2
  R=$GC_RESULTS
  cd "$here" || exit 1
  cmd() {  # run a command, noted in commands.txt as it could be typed (the copied inputs as DATA and REF)
    local line
    printf -v line '%q ' "$@"
    if [[ $PY == */* ]]; then line=${line//"$PY"/python}; fi
    line=${line//"$GC_DATA"/DATA}; line=${line//"$GC_REF"/REF}; line=${line//"$R"/RESULTS}; line=${line//"$here/"/}
    line=${line% }
    if [ "$PWD" != "$here" ]; then line="(cd ${PWD/#"$R"/RESULTS} && $line)"; fi
    echo "$line" >> "$R/commands.txt"
    "$@"
  }
  reference_args() {  # ref_args=(--reference the course-rule reference curves of variant $1, and files $2...)
    local f refs=()
    for f in "$GC_REF"/ref_"$1"_course_s*.csv "${@:2}"; do if [ -f "$f" ]; then refs+=("$f"); fi; done
    ref_args=()
    if [ ${#refs[@]} -gt 0 ]; then ref_args=(--reference "${refs[@]}"); fi
  }
  case $stage in
    probe)
      cmd "$PY" "$helper" probe "$DEVICE" "$GC_DATA/wiki.txt" "$PROBE_RUNS" "$PROBE_EPOCHS" "$R/probe" > "$R/probe.md" \
        || exit 1
      cat "$R/probe.md"
      ;;
    tests)
      if ! "$PY" -c "import pytest" 2>/dev/null; then
        wheels=$WHEELS
        if ! ls "$wheels"/pytest-*.whl > /dev/null 2>&1; then
          echo "pytest is not installed here and $wheels holds no pytest wheel (see bench/gpu_check.sh's header)" \
            | tee "$R/stages/tests.note"
          exit 77
        fi
        site="${TMPDIR:-/tmp}/gpu_check_site"
        cmd "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl \
          || exit 1
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
      fi
      export A5_DATA_DIR="$GC_DATA"
      cmd "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_gpu_check.py tests/test_model.py \
        tests/test_corruption.py tests/test_trainer.py tests/test_attention_kernels.py
      ;;
    kernels)
      cmd "$PY" "$helper" kernels "$DEVICE" "$GC_DATA/wiki.txt" > "$R/kernels.md" || exit 1
      cat "$R/kernels.md"
      ;;
    bisect)
      reference_args vanilla
      # shellcheck disable=SC2086  # BISECT_VARIANTS is a list of names
      cmd "$PY" "$here/bench/bisect_default.py" "$GC_DATA/wiki.txt" "$R/bisect" --epochs "$BISECT_EPOCHS" \
        --device "$DEVICE" --variants $BISECT_VARIANTS "${ref_args[@]}"
      ;;
    vanilla|perceiver|rope|recipe|compiled)
      v=$(variant_of "$stage")
      p="$R/pipelines/$stage"
      # a checkpoint every minute: the window may close without a signal, and a later session resumes
      flags="--device $DEVICE --checkpoint_minutes 1${FINETUNE_EPOCHS:+ --max_epochs $FINETUNE_EPOCHS}"
      pretrain=()
      case $stage in
        compiled) flags+=" --compile" ;;
        # shellcheck disable=SC2206  # RECIPE_FLAGS is a list of arguments
        recipe) pretrain=(${RECIPE_FLAGS//DATA\//$GC_DATA/}) ;;
      esac
      # FLAGS go to every command of the pipeline; the arguments after the folder to pretraining only
      cmd env FLAGS="$flags" bash "$here/bench/pipeline.sh" "$v" "$GC_DATA" "$p" "${pretrain[@]}" \
        ${PRETRAIN_EPOCHS:+--max_epochs $PRETRAIN_EPOCHS}
      rc=$?
      tail -n 4 "$p/log.txt"
      [ $rc = 0 ] || exit $rc
      run_dir=$(ls -d "$p"/expt/pretrain/*/ | head -n 1)
      # steps per epoch from pretraining's start-up line: "... E epochs = S steps"
      per_epoch=$(sed -nE 's/^pretrain .* ([0-9]+) epochs = ([0-9,]+) steps.*/\1 \2/p' "$p/log.txt" | head -n 1 |
                  awk '{gsub(",", "", $2); print int($2 / $1)}')
      [ -n "$per_epoch" ] || { echo "no start-up line in $p/log.txt"; exit 1; }
      if [ "$stage" = compiled ] || [ "$v" = rope ]; then
        # beside the eager vanilla pipeline of this run (wait for it: it started first)
        while [ "$(state "$R" vanilla)" = running ]; do sleep 5; done
        reference_args vanilla "$R/loss_vanilla.csv"
      else
        reference_args "$v"
      fi
      cmd "$PY" "$here/bench/reference_curve.py" "${run_dir%/}" "$R/loss_$stage" --steps_per_epoch "$per_epoch" \
        --label "$stage" "${ref_args[@]}" > "$R/loss_$stage.md" || exit 1
      tail -n 3 "$R/loss_$stage.md"
      ;;
    bench)
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
      cmd "$PY" "$here/bench/bench_speed.py" --data_dir "$GC_DATA" --device "$DEVICE" \
        $BENCH_ARGS > "$R/bench.md"
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
  exit
fi

[ $# -ge 2 ] || { sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2; }
DATA=$(cd "$1" && pwd) || exit 2
REF=$(cd "$2" && pwd) || exit 2
ROOT=${3:-$here/results/gpu}
mkdir -p "$ROOT" && ROOT=$(cd "$ROOT" && pwd) || exit 2
echo $$ > "$ROOT/gpu_check.pid"  # what --wait watches
trap 'rm -f "$ROOT/gpu_check.pid"' EXIT
export DEVICE=${DEVICE:-cuda}
ALL="probe tests kernels vanilla perceiver bisect rope recipe compiled bench"
STAGES=${STAGES:-$ALL}
for s in $STAGES; do
  case " $ALL " in *" $s "*) ;; *) echo "gpu_check.sh: unknown stage $s (stages: $ALL)" >&2; exit 2 ;; esac
done
card=$("$PY" "$helper" card "$DEVICE") || exit 1
R="$ROOT/$card"
mkdir -p "$R/stages"
rm -f "$R/finished"
# the stages read copies: on the device, the next call's carry replaces the carried folder
input=$(mktemp -d)
trap 'rm -rf "$input" "$ROOT/gpu_check.pid"' EXIT
mkdir "$input/data" "$input/reference"
cp "$DATA"/{wiki.txt,birth_places_train.tsv,birth_dev.tsv,birth_test_inputs.tsv} "$input/data/" || exit 1
cp "$REF"/*.csv "$input/reference/" 2>/dev/null || echo "gpu_check.sh: note: no reference CSVs in $REF"
export GC_DATA="$input/data" GC_REF="$input/reference" GC_RESULTS="$R" PRETRAIN_EPOCHS="${PRETRAIN_EPOCHS:-}"
export FINETUNE_EPOCHS="${FINETUNE_EPOCHS:-}" WHEELS="${WHEELS:-$here/.whl}"
export PROBE_RUNS="${PROBE_RUNS:-4}" PROBE_EPOCHS="${PROBE_EPOCHS:-6}" BISECT_EPOCHS="${BISECT_EPOCHS:-50}"
export BISECT_VARIANTS="${BISECT_VARIANTS:-bf16 bf16_sdpa_no_cudnn bf16_sdpa}"
# the best recipe of results/recipes/ (the highest dev accuracy after 100 epochs: its README);
# DATA/ stands for the data folder
export RECIPE_VARIANT="${RECIPE_VARIANT:-rope}"
export RECIPE_FLAGS="${RECIPE_FLAGS---final_epochs 100 --max_epochs 100 --batch_size 32 --dropout 0 --mix_questions_path DATA/birth_places_train.tsv}"
export BENCH_ARGS="${BENCH_ARGS---reps 3 --cli --cli_epochs 10 --compile}"  # set but empty: no arguments

log() { echo "[$(date -u '+%T')] $*" | tee -a "$R/log.txt"; }
{
  commit=$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)
  echo "$(date -u '+%F %T') UTC; $(getconf _NPROCESSORS_ONLN) CPU cores; DEVICE=$DEVICE; commit $commit"
  "$PY" -c "import sys, torch; print(f'torch {torch.__version__}, Python {sys.version.split()[0]}' + (
    f', CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}'
    if torch.cuda.is_available() else ''))"
  echo "STAGES=\"$STAGES\" PRETRAIN_EPOCHS=$PRETRAIN_EPOCHS FINETUNE_EPOCHS=$FINETUNE_EPOCHS" \
    "PROBE_RUNS=$PROBE_RUNS BISECT_EPOCHS=$BISECT_EPOCHS BISECT_VARIANTS=\"$BISECT_VARIANTS\"" \
    "RECIPE_VARIANT=$RECIPE_VARIANT RECIPE_FLAGS=\"$RECIPE_FLAGS\" BENCH_ARGS=\"$BENCH_ARGS\""
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
} > "$R/env.txt"
echo "# $(date -u '+%F %T') UTC: DEVICE=$DEVICE STAGES=\"$STAGES\" bash bench/gpu_check.sh DATA REF ROOT" \
  >> "$R/commands.txt"

selected() { [[ " $STAGES " == *" $1 "* ]]; }
done_ok() { [ "$(state "$R" "$1")" = ok ]; }
for s in $STAGES; do done_ok "$s" || echo waiting > "$R/stages/$s.status"; done

stage() {  # NAME LIMIT: bash gpu_check.sh --stage NAME within LIMIT seconds (0: none); its status in stages/
  local name=$1 limit=$2 st="$R/stages/$1.status" t0=$SECONDS rc
  if done_ok "$name"; then log "$name: ended ok in an earlier run: kept"; return 0; fi
  rm -f "$R/stages/$name.note"
  echo "running $(date +%s)" > "$st"
  log "$name: started"
  timeout "$limit" bash "$self" --stage "$name" > "$R/$name.log" 2>&1
  rc=$?
  case $rc in
    0) echo "ok $((SECONDS - t0))" > "$st" ;;
    77) echo "skipped $((SECONDS - t0))" > "$st" ;;
    124) echo "FAILED $((SECONDS - t0)) timed out after $limit s" > "$st" ;;
    *) echo "FAILED $((SECONDS - t0)) exit $rc" > "$st" ;;
  esac
  log "$name: $(cat "$st")"
  "$PY" "$helper" summary "$R" > /dev/null 2>&1
}

pipelines() {  # the pipelines in priority order, at most $1 at once
  local s
  for s in $PIPELINES; do
    selected "$s" || continue
    while [ "$(jobs -rp | wc -l)" -ge "$1" ]; do sleep 2; done
    stage "$s" 0 &
  done
  wait
}

log "results in $R; stages: $STAGES"
if selected probe; then stage probe 300; fi
parallel=$(cat "$R/probe/parallel.txt" 2>/dev/null || echo 2)
log "pipelines at once: $parallel"
pipelines "$parallel" &
scheduler=$!
for s in tests kernels bisect; do
  if selected $s; then stage $s 900; fi
done
wait "$scheduler"
if selected bench; then stage bench 1800; fi

failed=()
for s in $STAGES; do
  case $(state "$R" "$s") in ok|skipped) ;; *) failed+=("$s") ;; esac
done
if [ ${#failed[@]} -eq 0 ]; then
  echo "finished $(date -u '+%F %T') UTC: exit 0, every stage ok (or skipped with a note)" > "$R/finished"
else
  echo "finished $(date -u '+%F %T') UTC: exit 1, failed: ${failed[*]}" > "$R/finished"
fi
"$PY" "$helper" summary "$R"
[ ${#failed[@]} -eq 0 ]
