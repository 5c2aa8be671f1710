#!/usr/bin/env bash
# exp.sh DATA TAG PRETRAIN_FLAGS... : pretrain, then finetune (handout and b32) and evaluate dev
set -e
D=$1; T=$2; shift 2
P=/work/main/.venv/bin/python; R=/work/main/src/run.py
mkdir -p /tmp/synth/runs/$T && cd /tmp/synth/runs/$T
$P $R pretrain vanilla $D/wiki.txt --writing_params_path pt.params "$@" 2>/dev/null | grep trained
$P /work/main/bench/probe_memory.py $D/wiki.txt pt.params $D/birth_dev.tsv 2>&1 | tail -1
for fl in "" "--batch_size 32"; do
  $P $R finetune vanilla $D/wiki.txt --reading_params_path pt.params --writing_params_path ft.params --finetune_corpus_path $D/birth_places_train.tsv $fl 2>/dev/null | grep trained
  $P $R evaluate vanilla $D/wiki.txt --reading_params_path ft.params --eval_corpus_path $D/birth_dev.tsv --outputs_path dev.pred 2>/dev/null | grep Correct
done
