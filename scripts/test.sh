#!/usr/bin/env bash
# One command for a fresh machine: create .venv, build + install fastpose (CUDA kernels too when nvcc is
# on PATH) with its test extras, install the reference packages of the compatibility tests, then run the whole
# test suite (Python + the C++ API consumer test) and print the 15 slowest tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k flows`.
#
# Reference packages (never fastpose dependencies), checked against by tests/test_compat_cellpose.py:
#   * Cellpose 4 in .venv beside fastpose, without its dependencies (tests/compat/cellpose4-requirements.txt);
#   * Cellpose 3 in its own environment build-cp3/, driven by subprocess (tests/compat/cellpose3-requirements.txt);
#   * Scellseg 0.1.8's sdist (source + published weights) unpacked in build-refs/ (tests/test_scellseg_compat.py).
# FASTPOSE_REQUIRE_COMPAT=1 makes a missing reference package a test failure, not a skip.
# FASTPOSE_COMPAT=0 skips installing them (the compatibility tests are then skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test

if [ "${FASTPOSE_COMPAT:-1}" != 0 ]; then
  t0=$SECONDS
  .venv/bin/python -m pip install -q --no-deps -r tests/compat/cellpose4-requirements.txt
  CP3=build-cp3
  if ! "$CP3/bin/python" -c "import cellpose.models, sys; sys.exit(cellpose.version != '3.1.1.3')" 2>/dev/null; then
    rm -rf "$CP3"
    "${PYTHON:-python3}" -m venv "$CP3"
    "$CP3/bin/python" -m pip install -q --upgrade pip
    "$CP3/bin/python" -m pip install -q "torch==2.13.0"   # the CPU wheel first, as for .venv
    "$CP3/bin/python" -m pip install -q -r tests/compat/cellpose3-requirements.txt
    "$CP3/bin/python" -m pip install -q --no-deps "cellpose==3.1.1.3"
  fi
  # Scellseg 0.1.8's source and published weights (its sdist; not installed: its network code is imported by path)
  SC=build-refs/scellseg-0.1.8
  if [ ! -f "$SC/scellseg/net_desc.py" ]; then
    mkdir -p build-refs
    .venv/bin/python -m pip download -q --no-deps --no-binary :all: -d build-refs "scellseg==0.1.8"
    tar xzf build-refs/scellseg-0.1.8.tar.gz -C build-refs
  fi
  export FASTPOSE_REQUIRE_COMPAT=1 FASTPOSE_CELLPOSE3_VENV="$PWD/$CP3" FASTPOSE_SCELLSEG_SRC="$PWD/$SC"
  echo "compatibility references (cellpose 4 in .venv, cellpose 3 in $CP3, scellseg source in $SC) ready in" \
    "$((SECONDS - t0)) s"
fi

cd tests  # run against the installed package, not the source tree
# -m "": run the tests marked slow too (plain pytest deselects them, see pyproject.toml)
rc=0
../.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -m "" "$@" . || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "scripts/test.sh: pytest collected no tests (exit code 5): counted as a failure" >&2
  exit 1
fi
exit "$rc"
