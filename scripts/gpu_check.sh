#!/usr/bin/env bash
# On a machine with a CUDA GPU, nvcc, PyTorch (CUDA) and pybind11/scikit-build-core installed:
# build fastpose with CUDA, run the whole test suite with GPU tests forced on, run the core kernels under
# compute-sanitizer, and produce every GPU figure of bench/RESULTS.md (bench/gpu_figures.sh).
#   bash scripts/gpu_check.sh [tests|sanitize|figures|all]
# Logs go to ${LOGDIR:-$OUT/logs}; JSON figures to ${OUT:-gpu_out}/; everything is also packed into
# $OUT/gpu_check.tgz.  Set CELLPOSE3_PATH / CELLPOSE4_PATH (folders holding cellpose 3.x / 4.x) for the
# side-by-side figures.  (Where few files may come back from $OUT, point LOGDIR elsewhere, e.g. /tmp/logs: the
# JSON figures and the .tgz are then all that $OUT holds.)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}; logs=${LOGDIR:-$out/logs}; mkdir -p "$out" "$logs"
what=${1:-all}
export PYTHONUNBUFFERED=1
archs=${FASTPOSE_CUDA_ARCHS:-90}
python3 -m pip install -q --no-build-isolation --no-deps \
  -Ccmake.define.FASTPOSE_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$archs" . > "$logs/build.log" 2>&1 \
  || { tail -30 "$logs/build.log"; exit 1; }
python3 -c "import fastpose.core as fc; print('backend', fc.backend(), 'cuda', fc.cuda_available())" | tee "$logs/info.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$logs/info.txt"
rc=0
if [[ $what == all || $what == tests ]]; then
  (cd tests && FASTPOSE_REQUIRE_CUDA=1 python3 -m pytest -q -p no:cacheprovider -rs . > "../$logs/tests.log" 2>&1) || rc=1
  tail -5 "$logs/tests.log"
fi
if [[ $what == all || $what == sanitize ]]; then
  for tool in memcheck racecheck initcheck; do
    small=""; [[ $tool == racecheck ]] && small="--small"  # racecheck takes minutes on the 69 696-label case
    timeout 600 compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/sanitize_driver.py $small \
      > "$logs/sanitize_$tool.log" 2>&1
    code=$?; echo "compute-sanitizer $tool: exit $code" | tee -a "$logs/sanitize.txt"; [[ $code == 0 ]] || rc=1
    tail -2 "$logs/sanitize_$tool.log"
  done
fi
if [[ $what == all || $what == figures ]]; then
  LOGDIR="$logs" OUT="$out" bash bench/gpu_figures.sh
fi
tar -C "$logs" -czf "$out/gpu_check.tgz" . 2>/dev/null
exit $rc
