#!/usr/bin/env bash
# Create .venv and build + install fastpose into it (CUDA kernels too when nvcc is on PATH).
#   bash scripts/setup.sh [extra]     e.g. `bash scripts/setup.sh test` installs the test extras too
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# PyTorch first, at the version the suite is validated with (a CPU wheel where one is provided locally);
# an already-installed torch is kept.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
if [ -n "${1:-}" ]; then
  .venv/bin/python -m pip install -q ".[$1]"
else
  .venv/bin/python -m pip install -q .
fi
