#!/usr/bin/env bash
# Reproduce the GPU figures of bench/RESULTS.md on any machine with a CUDA GPU, fastpose built with CUDA and
# (optionally) the cellpose packages to compare with, each importable from its own folder:
#   CELLPOSE3_PATH=/path/to/site-with-cellpose-3.x CELLPOSE4_PATH=/path/to/site-with-cellpose-4.x \
#     OUT=gpu_figures bash bench/gpu_figures.sh
# Every figure is a ratio measured in the same run on the same GPU: post-processing and flow targets vs
# cellpose 3.x's GPU path, the U-Net network step per precision/backend vs eager fp32, end-to-end 1080x1080
# two-channel segmentation with the bundled cyto model (real masks, so both sides pay for mask recovery) vs
# cellpose 3.x, and vit_l segmentation of 1200x1200 images vs cellpose 4.x.
set -uo pipefail
out=${OUT:-gpu_figures}; logs=${LOGDIR:-$out}; mkdir -p "$out" "$logs"
export PYTHONUNBUFFERED=1
cp3=${CELLPOSE3_PATH:-}; cp4=${CELLPOSE4_PATH:-}
base=${PYTHONPATH:-}
step() { local name=$1 limit=$2 path=$3; shift 3
  echo "== $name"; PYTHONPATH="$path${base:+:$base}" timeout "$limit" python3 -m fastpose.bench "$@" --json "$out/$name.json" \
    > "$logs/$name.txt" 2>&1; echo "   exit $?"; grep -E "speed-up|tiles_per_s|images_per_s|compute_masks|masks_to_flows|WARN|rror" "$logs/$name.txt" | cut -c1-150; }
step core 120 "$cp3" core --device cuda --3d --repeats 5
step net_unet 170 "" net --arch unet --batch-sizes 8 32 --backends torch compile tensorrt
step net_vit_l 80 "" net --arch vit_l --batch-sizes 8 --backends torch tensorrt
step e2e 100 "$cp3" segment --model cyto --images 8 --repeats 3 --device cuda --precision fp16
step sam 120 "$cp4" sam --arch vit_l --images 4 --repeats 2 --precision bf16
step e2e_compile 100 "" segment --model cyto --images 8 --repeats 3 --device cuda --precision fp16 --backend compile --no-cellpose
