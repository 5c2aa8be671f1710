#!/usr/bin/env bash
# Dev accuracy along one pretraining run, and its loss beside the reference curves: how
# results/rope/ and results/recipes/ were made.
#
#   bash bench/epoch_curve.sh VARIANT DATA OUT EPOCHS EVERY [PRETRAIN FLAGS...]
#
# Pretrains VARIANT (vanilla, perceiver, rope) on DATA/wiki.txt for EPOCHS epochs with
# the flags given, keeping a snapshot every EVERY epochs (--save_every); finetunes each
# snapshot the handout's way and evaluates it on DATA/birth_dev.tsv (bench/snapshot_curve.py);
# writes OUT/log.txt (the commands, their wall times), OUT/snapshots.md (epoch, step, dev
# accuracy), OUT/loss.csv and OUT/loss.md (per-epoch loss beside $REF/ref_<variant>_course_s*.csv
# if REF is set: bench/reference_curve.py). --max_epochs does not change the lr schedule: add
# --final_epochs to end it earlier. Rerun the same command after an interruption: the
# pretraining resumes. The snapshots (40 MB each) are deleted once evaluated, unless KEEP=1.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 5 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
v=$1; D="$(cd "$2" && pwd)"; mkdir -p "$3"; OUT="$(cd "$3" && pwd)"; epochs=$4; every=$5; shift 5
PY="${PYTHON:-python}"
model=()
if [ "$v" = perceiver ]; then model=(--bottleneck_dim 64); fi
cd "$OUT"
log="$OUT/log.txt"
echo "# $(date -u '+%F %T') UTC, $(getconf _NPROCESSORS_ONLN) cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}:" \
  "bash bench/epoch_curve.sh $v DATA OUT $epochs $every $*" >> "$log"
params="$v.pretrain.params"
if [ ! -e "$params" ]; then
  resume=""
  if [ -e "$params.ckpt" ]; then resume="--resume"; fi
  flags=("${model[@]}" --writing_params_path "$params" --max_epochs "$epochs" --save_every "$every" "$@" $resume)
  echo "\$ python src/run.py pretrain $v DATA/wiki.txt ${flags[*]}" >> "$log"
  t0=$SECONDS
  if ! "$PY" "$here/src/run.py" pretrain "$v" "$D/wiki.txt" "${flags[@]}" > pretrain.out 2> pretrain.err; then
    tr '\r' '\n' < pretrain.err | grep -v '^ *$' | tail -3 >> "$log"; exit 1
  fi
  grep -E "^(pretrain|trained|resuming)" pretrain.out >> "$log" || true
  echo "wall time: $((SECONDS - t0)) s" >> "$log"
fi
snapshots=$(ls -v "$params".ckpt.epoch* 2>/dev/null || true)
if [ -n "$snapshots" ]; then
  echo "\$ python bench/snapshot_curve.py DATA OUT/snapshots" $snapshots "--variant $v ${model[*]}" >> "$log"
  t0=$SECONDS
  # shellcheck disable=SC2086  # a list of files
  "$PY" "$here/bench/snapshot_curve.py" "$D" "$OUT/snapshots" $snapshots --variant "$v" "${model[@]}" > snapshots.out
  sed -n '/^| pretraining/,$p' snapshots.out > snapshots.md
  cat snapshots.md >> "$log"
  echo "wall time: $((SECONDS - t0)) s" >> "$log"
  if [ "${KEEP:-0}" != 1 ]; then rm -f $snapshots "$OUT"/snapshots/*.params; fi
fi
# steps per epoch from the start-up line: "... E epochs = S steps"
per_epoch=$(sed -nE 's/^pretrain .* ([0-9]+) epochs = ([0-9,]+) steps.*/\1 \2/p' pretrain.out | head -n 1 |
            awk '{gsub(",", "", $2); print int($2 / $1)}')
refs=()
if [ -n "${REF:-}" ]; then for f in "$REF"/ref_"$v"_course_s*.csv; do [ -f "$f" ] && refs+=("$f"); done; fi
"$PY" "$here/bench/reference_curve.py" "$(ls -d "$OUT"/expt/pretrain/*/ | head -n 1)" "$OUT/loss" \
  --steps_per_epoch "$per_epoch" --label "$v" ${refs[@]:+--reference "${refs[@]}"} > loss.md
rm -f pretrain.err
