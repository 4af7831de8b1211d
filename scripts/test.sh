#!/usr/bin/env bash
# One command for a fresh machine: create .venv, build + install fastpose (CUDA kernels too when nvcc is
# on PATH) with its test extras, then run the whole test suite (Python + the C++ API consumer test).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k flows`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
cd tests  # run against the installed package, not the source tree
exec ../.venv/bin/python -m pytest -q -p no:cacheprovider "$@" .
