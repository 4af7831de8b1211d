#!/usr/bin/env bash
# Developer build without pip: configure + build into BUILD_DIR and stage an importable package at
# BUILD_DIR/pkg (use: PYTHONPATH=BUILD_DIR/pkg python -m pytest tests/...).
#   scripts/dev_build.sh [BUILD_DIR] [extra cmake args...]   e.g. -DFASTPOSE_CUDA=OFF
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-dev}; shift || true
pyexe=${PYTHON:-python3}
pybind_dir=$($pyexe -c 'import pybind11; print(pybind11.get_cmake_dir())')
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTPOSE_BUILD_PYTHON=ON \
  -Dpybind11_DIR="$pybind_dir" -DPython_EXECUTABLE="$(command -v $pyexe)" "$@" >/dev/null
cmake --build "$build" -j"${JOBS:-2}"
pkg=$build/pkg/fastpose
rm -rf "$build/pkg"; mkdir -p "$pkg/lib"
for f in "$root"/python/fastpose/*; do ln -s "$f" "$pkg/"; done
ln -s "$build"/_core*.so "$pkg/"
ln -s "$build"/libfastpose_core.so "$pkg/lib/"
echo "staged: PYTHONPATH=$build/pkg"
