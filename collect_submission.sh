#!/usr/bin/env bash
# Builds assignment5.zip from src/*.py and the nine outputs of the handout, run
# from the folder that holds them (default: this one): the 2023 handout's, or the
# 2024-25 handout's (rope's three in place of the Perceiver's) when the folder
# holds rope outputs and no Perceiver's. It checks what it zips:
# each predictions file has the course's line count (500 dev, 437 test) and each
# params file loads as its variant (the Perceiver's with the handout's m = 64),
# over the course's vocabulary (256 ids; the corpus run.py recorded, where it did).
# Each problem is one line naming the file; then it exits non-zero (the zip then
# holds what there is). The params check needs torch: $PYTHON, else this
# repository's .venv, else python3; without torch it says they were not checked.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
cd "${1:-$here}"
last=perceiver
if ls rope.finetune.params rope.pretrain.*.predictions > /dev/null 2>&1 &&
   ! ls perceiver.finetune.params perceiver.pretrain.*.predictions > /dev/null 2>&1; then
  last=rope
  echo "collect_submission.sh: rope's outputs in place of the Perceiver's (the 2024-25 handout)"
fi
outputs="vanilla.model.params vanilla.nopretrain.dev.predictions vanilla.nopretrain.test.predictions
vanilla.finetune.params vanilla.pretrain.dev.predictions vanilla.pretrain.test.predictions
$last.finetune.params $last.pretrain.dev.predictions $last.pretrain.test.predictions"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$here/.venv/bin/python" ]; then py="$here/.venv/bin/python"; else py="$(command -v python3 || command -v python)"; fi
fi
"$py" - "$here" $outputs <<'PY'
import glob, os, sys, zipfile
here, outputs = sys.argv[1], sys.argv[2:]
LINES = {"dev": 500, "test": 437}  # the course's birth_dev.tsv and birth_test_inputs.tsv
# the course's vocabulary: PAD, MASK and the 254 characters of its wiki.txt (run.py's vocab_sha256 of them,
# stored in each params file it writes)
COURSE_VOCAB_IDS = 256
COURSE_VOCAB_SHA256 = "6233c8fe29e2195d2b7ce1a4b58acd7fa942ed2264978a79d5269cde3743d2cc"
sources = sorted(glob.glob(os.path.join(here, "src", "*.py")))
present = [f for f in outputs if os.path.isfile(f)]
missing = [f for f in outputs if f not in present]
tmp = "assignment5.zip.tmp"
try:
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sources:
            z.write(f, os.path.join("src", os.path.basename(f)))
        for f in present:
            z.write(f)
    os.replace(tmp, "assignment5.zip")
except OSError as e:  # a read-only or full folder (or an unreadable output)
    if os.path.isfile(tmp):
        os.remove(tmp)
    sys.exit(f"collect_submission.sh: cannot write assignment5.zip in {os.getcwd()} ({e.filename}: {e.strerror})")
print(f"assignment5.zip: {len(sources)} source files and {len(present)} of {len(outputs)} outputs")

problems = []
for f in present:
    if f.endswith(".predictions"):
        with open(f, "rb") as fh:
            data = fh.read()
        # one line per question; the last may lack its newline
        n = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
        want = LINES[f.split(".")[-2]]
        if n != want:
            problems.append(f"{f}: {n} lines, the course's {f.split('.')[-2]} set has {want} questions "
                            f"(predictions made on another corpus?)")

params = [f for f in present if f.endswith(".params")]
try:
    import torch
except ImportError:
    torch = None
    if params:
        print(f"collect_submission.sh: warning: {sys.executable} has no torch: the params files were not checked "
              f"(set PYTHON to an interpreter with torch)", file=sys.stderr)
for f in params if torch else []:
    try:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        problems.append(f"{f}: not a readable params file ({type(e).__name__}: {str(e)[:80]})")
        continue
    if not isinstance(sd, dict) or "tok_emb.weight" not in sd or not all(torch.is_tensor(v) for v in sd.values()):
        problems.append(f"{f}: not a model's state_dict (run.py writes one with --writing_params_path)")
    # which model the params are (as run.py's params_variant): the Perceiver's basis C, RoPE's lack of pos_emb
    elif (found := "perceiver" if "down_block.C" in sd else "vanilla" if "pos_emb" in sd else "rope") != \
            f.split(".")[0]:
        problems.append(f"{f}: {found} params, not the {f.split('.')[0]} model's")
    elif found == "perceiver" and (sd["down_block.C"].shape[1] if sd["down_block.C"].dim() == 3 else None) != 64:
        problems.append(f"{f}: a Perceiver whose down_block.C is {tuple(sd['down_block.C'].shape)}: "
                        f"the handout's bottleneck is m = 64 (--bottleneck_dim 64)")
    if isinstance(sd, dict) and torch.is_tensor(sd.get("tok_emb.weight")):
        ids = sd["tok_emb.weight"].shape[0] if sd["tok_emb.weight"].dim() else 0
        meta = getattr(sd, "_metadata", None)
        vocab = meta.get("", {}).get("a5_vocab_sha256") if isinstance(meta, dict) else None
        if ids != COURSE_VOCAB_IDS or vocab not in (None, COURSE_VOCAB_SHA256):
            problems.append(f"{f}: trained over another vocabulary of {ids} ids, not the course's wiki.txt "
                            f"({COURSE_VOCAB_IDS}: PAD, MASK and 254 characters): pretrain on the course's wiki.txt")
        elif vocab is not None:
            print(f"{f}: the course's vocabulary (wiki.txt)")
        else:  # written by the course's code, or by this project before it stored the vocabulary
            print(f"{f}: a vocabulary of the course's size ({ids} ids); which corpus is not recorded")

if missing:
    problems.insert(0, "missing outputs: " + " ".join(missing))
for p in problems:
    print("collect_submission.sh: " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
