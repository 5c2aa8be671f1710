#!/usr/bin/env bash
# Builds assignment5.zip from src/*.py and the nine outputs of the handout, run
# from the folder that holds them (default: this one). Says which outputs are
# missing and exits non-zero if any are (the zip then holds what there is).
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
cd "${1:-$here}"
outputs="vanilla.model.params vanilla.nopretrain.dev.predictions vanilla.nopretrain.test.predictions
vanilla.finetune.params vanilla.pretrain.dev.predictions vanilla.pretrain.test.predictions
perceiver.finetune.params perceiver.pretrain.dev.predictions perceiver.pretrain.test.predictions"
"$(command -v python3 || command -v python)" - "$here" $outputs <<'PY'
import glob, os, sys, zipfile
here, outputs = sys.argv[1], sys.argv[2:]
sources = sorted(glob.glob(os.path.join(here, "src", "*.py")))
present = [f for f in outputs if os.path.isfile(f)]
missing = [f for f in outputs if f not in present]
tmp = "assignment5.zip.tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
    for f in sources:
        z.write(f, os.path.join("src", os.path.basename(f)))
    for f in present:
        z.write(f)
os.replace(tmp, "assignment5.zip")
print(f"assignment5.zip: {len(sources)} source files and {len(present)} of {len(outputs)} outputs")
if missing:
    sys.exit("collect_submission.sh: missing outputs: " + " ".join(missing))
PY
