#!/usr/bin/env bash
# The laptop recipe: the handout's vanilla pipeline with pretraining compressed
# to E epochs, the lr cosine scaled to end at its floor at the last epoch.
#   bash bench/laptop_recipe.sh DATA OUT [E]
# Writes OUT/log.txt (every command, its wall time, the last lines of its output)
# and OUT/*.predictions; params stay in OUT and are never committed.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
D="$(cd "$1" && pwd)"; mkdir -p "$2"; OUT="$(cd "$2" && pwd)"; E="${3:-120}"
PY="${PYTHON:-python}"
cd "$OUT"
log="$OUT/log.txt"; : > "$log"
step() {
  echo "\$ $*" >> "$log"
  local t0=$SECONDS
  "$PY" "$here/src/run.py" "$@" > "$OUT/last.out" 2> "$OUT/last.err" || { tail -5 "$OUT/last.err" >> "$log"; exit 1; }
  grep -E "^(trained|resuming|Correct|Predictions written|decoded)" "$OUT/last.out" >> "$log" || true
  echo "wall time: $((SECONDS - t0)) s" >> "$log"
}
start=$SECONDS
step pretrain vanilla "$D/wiki.txt" --writing_params_path vanilla.pretrain.params --max_epochs "$E" --final_epochs "$E"
step finetune vanilla "$D/wiki.txt" --reading_params_path vanilla.pretrain.params --writing_params_path vanilla.finetune.params --finetune_corpus_path "$D/birth_places_train.tsv"
step evaluate vanilla "$D/wiki.txt" --reading_params_path vanilla.finetune.params --eval_corpus_path "$D/birth_dev.tsv" --outputs_path vanilla.pretrain.dev.predictions
echo "total wall time: $((SECONDS - start)) s" >> "$log"
