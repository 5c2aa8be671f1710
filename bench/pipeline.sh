#!/usr/bin/env bash
# The handout's pretrain -> finetune -> evaluate pipeline for one variant, each
# command timed and logged: how the experiments under results/ were made.
#
#   bash bench/pipeline.sh VARIANT DATA OUT [PRETRAIN FLAGS...]
#
#   the handout's full run (650 epochs), e.g. on a GPU, and the same the course's way:
#     bash bench/pipeline.sh vanilla ../shared/data OUT
#     FLAGS=--plain bash bench/pipeline.sh vanilla ../shared/data OUT_plain
#   a compressed schedule (results/README.md):
#     bash bench/pipeline.sh vanilla ../shared/data OUT --pretrain_lr 3e-3 --max_epochs 60 --final_epochs 60
#
# VARIANT is vanilla, perceiver (m = 64, as in the handout) or rope. $FLAGS go to every
# command (pretrain, finetune, evaluate), the other arguments to pretraining only. Writes OUT/log.txt
# (every command, the lines it printed that matter, its wall time), the dev and
# test predictions, TensorBoard logs in OUT/expt and, where matplotlib is
# installed, OUT/loss.png. Params stay in OUT (never commit them). Interrupted?
# Rerun the same command: finished steps are skipped and training resumes from
# its checkpoint.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
v="$1"; D="$(cd "$2" && pwd)"; mkdir -p "$3"; OUT="$(cd "$3" && pwd)"; shift 3
PY="${PYTHON:-python}"
model=()
if [ "$v" = perceiver ]; then model=(--bottleneck_dim 64); fi
model+=(${FLAGS:-})
cd "$OUT"
log="$OUT/log.txt"

step() {  # $1: the file the step makes (skipped if it exists); the rest: run.py's arguments
  local made=$1; shift
  if [ -e "$made" ]; then echo "# $made exists: skipped" >> "$log"; return; fi
  local resume=""
  if [ -e "$made.ckpt" ]; then resume="--resume"; fi
  echo "\$ python src/run.py $*${resume:+ $resume}" >> "$log"
  local t0=$SECONDS
  if ! "$PY" "$here/src/run.py" "$@" $resume > "$OUT/last.out" 2> "$OUT/last.err"; then
    # progress bars redraw with \r: keep the last three lines as a terminal shows them
    tr '\r' '\n' < "$OUT/last.err" | grep -v '^ *$' | tail -3 >> "$log"; exit 1
  fi
  grep -E "^((pretrain|finetune|evaluate) [a-z]+ on |trained|resuming|Correct|Predictions written|decoded)" "$OUT/last.out" >> "$log" || true
  echo "wall time: $((SECONDS - t0)) s" >> "$log"
}

echo "# $(date -u '+%F %T') UTC, $(getconf _NPROCESSORS_ONLN) cores: bash bench/pipeline.sh $v DATA OUT $*" >> "$log"
start=$SECONDS
step "$v.pretrain.params" pretrain "$v" "$D/wiki.txt" "${model[@]}" \
  --writing_params_path "$v.pretrain.params" "$@"
step "$v.finetune.params" finetune "$v" "$D/wiki.txt" "${model[@]}" --reading_params_path "$v.pretrain.params" \
  --writing_params_path "$v.finetune.params" --finetune_corpus_path "$D/birth_places_train.tsv"
step "$v.pretrain.dev.predictions" evaluate "$v" "$D/wiki.txt" "${model[@]}" --reading_params_path "$v.finetune.params" \
  --eval_corpus_path "$D/birth_dev.tsv" --outputs_path "$v.pretrain.dev.predictions"
step "$v.pretrain.test.predictions" evaluate "$v" "$D/wiki.txt" "${model[@]}" --reading_params_path "$v.finetune.params" \
  --eval_corpus_path "$D/birth_test_inputs.tsv" --outputs_path "$v.pretrain.test.predictions"
echo "total wall time of this invocation: $((SECONDS - start)) s" >> "$log"
if "$PY" -c "import matplotlib" 2>/dev/null; then
  "$PY" "$here/bench/plot_loss.py" "$OUT/expt" "$OUT/loss.png" >> "$log"
fi
