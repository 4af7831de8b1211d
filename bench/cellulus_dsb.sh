#!/usr/bin/env bash
# Cellulus on DSB 2018, one command (bench/RESULTS.md, "Cellulus"):
#   1. an unsupervised Cellulus network on the images of the nuclei recipe's training split (masks never read);
#   2. its inference settings (object size, post-processing) chosen on 12 training-split images with masks
#      (bench/cellulus_settings.py; the paper tuned its post-processing per dataset too);
#   3. Cellpose U-Nets bootstrapped from its pseudo-labels: with 0, 1 and 10% of the training masks
#      (fastpose train --pseudo-labels; half-and-half batches, L = (1 - alpha) L_annotated + alpha L_pseudo);
#   4. F1@0.5 and SEG on the held-out split (fluorescence and all images) for all of them, the supervised
#      bundled nuclei model beside (fastpose-bench cellulus).
#
#   bash bench/cellulus_dsb.sh /path/to/dsb2018/stage1_train [OUT_DIR]
#
# The defaults fit a 2-core CPU in about 100 minutes; on a GPU raise the budgets and the share of images:
#   CELLULUS_BUDGET (2700 s), STUDENT_BUDGET (330 s: the nuclei recipe's), LIMIT (200 training images
#   pseudo-labelled; 0 = all), NOISE (4: 8 noisy predictions per image for the pseudo-labels instead of 32).
# Files already there are kept (a rerun resumes where the last one stopped).
set -euo pipefail
data=${1:?usage: bench/cellulus_dsb.sh DSB_TRAIN_DIR [OUT_DIR]}
out=${2:-cellulus_dsb}
py=${PYTHON:-python}
CELLULUS_BUDGET=${CELLULUS_BUDGET:-2700}
STUDENT_BUDGET=${STUDENT_BUDGET:-330}
LIMIT=${LIMIT:-200}
NOISE=${NOISE:-4}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
teacher=$out/cellulus_nuclei.pth

if [ ! -f "$teacher" ]; then
  $py -m fastpose.cli train --recipe cellulus_nuclei --data "$data" --time-budget "$CELLULUS_BUDGET" \
    --out "$teacher" -q
fi
if [ ! -f "$out/settings.json" ]; then
  $py "$here/cellulus_settings.py" --data "$data" --model "$teacher" --write --json "$out/settings.json"
fi
limit=()
[ "$LIMIT" != 0 ] && limit=(--limit "$LIMIT")
students=()
for frac in 0 0.01 0.1; do
  student=$out/boot_$frac.pth
  students+=(--model "$student")
  [ -f "$student" ] && continue
  masks=()
  [ "$frac" != 0 ] && masks=(--masks-dir "$data" --masks-fraction "$frac")
  $py -m fastpose.cli train --recipe nuclei --pseudo-labels "$teacher" --teacher-setting "n_noise=$NOISE" \
    --data "$data" "${limit[@]}" "${masks[@]}" --pseudo-cache "$out/pseudo_labels" \
    --time-budget "$STUDENT_BUDGET" --no-card --out "$student" -q
done
$py -m fastpose.bench cellulus --data "$data" --model "$teacher" "${students[@]}" --model nuclei \
  --json "$out/cellulus_dsb.json"
# the unsupervised model's held-out scores into its card (validation.f1_seg_heldout)
$py - "$out/cellulus_dsb.json" "$out/cellulus_nuclei.json" <<'PY'
import json, sys
from fastpose.bench.cellulus import merge_into_card
res = json.load(open(sys.argv[1]))
merge_into_card(sys.argv[2], {**res, "models": res["models"][:1]})
PY
