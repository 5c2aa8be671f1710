# $1 data dir, $2 tag (reads $2/pt.params unless "none"), $3 out name, rest: finetune flags
d=$1 t=$2 o=$3; shift 3
cd /tmp/syn && mkdir -p $o
r=""; [ "$t" != none ] && r="--reading_params_path $t/pt.params"
OMP_NUM_THREADS=${TH:-1} /work/main/.venv/bin/python /work/main/src/run.py finetune vanilla $d/wiki.txt $r --writing_params_path $o/ft.params --finetune_corpus_path $d/birth_places_train.tsv "$@" > $o/ft.log 2>&1
OMP_NUM_THREADS=${TH:-1} /work/main/.venv/bin/python /work/main/src/run.py evaluate vanilla $d/wiki.txt --reading_params_path $o/ft.params --eval_corpus_path $d/birth_dev.tsv --outputs_path $o/dev.pred > $o/ev.log 2>&1
echo "$o $*: $(grep -o 'trained.*' $o/ft.log) | $(grep Correct $o/ev.log)"
