#!/usr/bin/env bash
# exp2.sh DATA TAG SEED "PT_FLAGS" "FT_FLAGS" : demo-like flow, prints dev for pretrained and not
set -e
D=$1; T=$2; S=$3; PT=$4; FT=$5
P=/work/main/.venv/bin/python; R=/work/main/src/run.py
mkdir -p /tmp/synth/runs/$T && cd /tmp/synth/runs/$T
$P $R pretrain vanilla $D/wiki.txt --writing_params_path pt.params --seed $S $PT 2>/dev/null | grep -o "trained.*s:"
$P $R finetune vanilla $D/wiki.txt --reading_params_path pt.params --writing_params_path ft.params --finetune_corpus_path $D/birth_places_train.tsv --seed $S $FT 2>/dev/null | grep -o "trained.*s:"
echo -n "pretrained: "; $P $R evaluate vanilla $D/wiki.txt --reading_params_path ft.params --eval_corpus_path $D/birth_dev.tsv --outputs_path dev.pred 2>/dev/null | grep Correct
$P $R finetune vanilla $D/wiki.txt --writing_params_path np.params --finetune_corpus_path $D/birth_places_train.tsv --seed $S $FT2 2>/dev/null | grep -o "trained.*s:"
echo -n "no pretraining: "; $P $R evaluate vanilla $D/wiki.txt --reading_params_path np.params --eval_corpus_path $D/birth_dev.tsv --outputs_path devnp.pred 2>/dev/null | grep Correct
echo -n "London: "; (cd /tmp && $P /work/main/london_baseline.py --eval_corpus_path $D/birth_dev.tsv | tail -1)
