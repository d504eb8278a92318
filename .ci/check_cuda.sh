#!/usr/bin/env bash
# A quick compile-check of the CUDA sources while developing (seconds per file,
# no CUDA torch needed): every csrc/cuda/*.cu with nvcc for sm_80 and sm_90 (the
# kernels include no torch headers), and every registration file
# csrc/cuda/*.cpp with the host compiler in syntax-only mode against torch's
# headers (PYTHON's torch: with a CPU wheel, one generated header is stubbed)
# and the CUDA runtime headers. It cannot see link or build-system problems:
# CI does the real build, .ci/cuda_build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v nvcc >/dev/null 2>&1; then
  echo "nvcc not found: CUDA compile-check skipped"
  exit 0
fi
shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
cpp_files=(csrc/cuda/*.cpp)
if [ ${#cu_files[@]} -eq 0 ]; then
  echo "no csrc/cuda/*.cu: nothing to check"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for arch in 80 90; do
  for cu in "${cu_files[@]}"; do
    echo "nvcc sm_$arch $cu"
    nvcc -std=c++17 -O3 -fmad=false --expt-relaxed-constexpr -arch=sm_$arch -Icsrc \
      -Xcompiler -Wall -c "$cu" -o "$work/check.o"
  done
done

# The CUDA runtime headers: ask nvcc where it takes them from (nvcc may be a
# wrapper script outside the toolkit), unless CUDA_HOME says.
if [ -n "${CUDA_HOME:-}" ]; then
  cuda_include="$CUDA_HOME/include"
else
  cuda_include=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
    sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -n 1 | sed 's/ *$//')
fi
torch_include=$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
mkdir -p "$work/shim/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$work/shim/c10/cuda/impl/cuda_cmake_macros.h"
for cpp in "${cpp_files[@]}"; do
  echo "syntax $cpp"
  g++ -std=c++20 -fsyntax-only -Wall -DWITH_CUDA -Icsrc -I"$work/shim" -I"$torch_include" \
    -I"$torch_include/torch/csrc/api/include" -I"$cuda_include" "$cpp"
done
echo "CUDA sources compile"
