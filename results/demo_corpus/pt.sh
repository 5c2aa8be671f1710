# $1 data dir, $2 out tag, $3 lr, $4 epochs, rest: flags
d=$1 t=$2 lr=$3 e=$4; shift 4
cd /tmp/syn && mkdir -p $t && OMP_NUM_THREADS=${TH:-1} /work/main/.venv/bin/python /work/main/src/run.py pretrain vanilla $d/wiki.txt --writing_params_path $t/pt.params --pretrain_lr $lr --max_epochs $e --final_epochs $e "$@" > $t/pt.log 2>&1
/work/main/.venv/bin/python /tmp/probe/probe.py $d/wiki.txt $t/pt.params $d/birth_places_train.tsv > $t/probe.txt
grep -o "trained.*" $t/pt.log >> $t/probe.txt
