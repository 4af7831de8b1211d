#!/usr/bin/env bash
# On a machine with a CUDA GPU, nvcc, PyTorch (CUDA) and pybind11/scikit-build-core installed:
# build fastpose with CUDA, run the whole test suite with GPU tests forced on, run the core kernels under
# compute-sanitizer, and time the core.  Results go to ${OUT:-gpu_out}/.
#   bash scripts/gpu_check.sh [tests|sanitize|bench|all]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_out}; mkdir -p "$out"
what=${1:-all}
export PYTHONUNBUFFERED=1
archs=${FASTPOSE_CUDA_ARCHS:-90}
python3 -m pip install -q --no-build-isolation --no-deps \
  -Ccmake.define.FASTPOSE_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$archs" . 2>&1 | tail -20 | tee "$out/build.log"
python3 -c "import fastpose.core as fc; print('backend', fc.backend(), 'cuda', fc.cuda_available())" | tee "$out/info.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$out/info.txt"
rc=0
if [[ $what == all || $what == tests ]]; then
  (cd tests && FASTPOSE_REQUIRE_CUDA=1 python3 -m pytest -q -p no:cacheprovider -rs . 2>&1 | tee "../$out/tests.log") || rc=1
fi
if [[ $what == all || $what == sanitize ]]; then
  for tool in memcheck racecheck initcheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/sanitize_driver.py > "$out/sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool: exit $?" | tee -a "$out/sanitize.txt"
    tail -3 "$out/sanitize_$tool.log"
  done
fi
if [[ $what == all || $what == bench ]]; then
  python3 -m fastpose.bench core --3d --json "$out/bench_core.json" 2>&1 | tee "$out/bench_core.txt"
fi
exit $rc
