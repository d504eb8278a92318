#!/usr/bin/env bash
# The real CUDA build, on a machine without a GPU: what a user with a CUDA torch
# gets from `FORCE_CUDA=1 pip install --no-build-isolation -e .`.
#
#  1. a second venv (build/venv-cuda, or $CUDA_VENV) with the CUDA build of
#     torch 2.13.0 (+cu130, matching nvcc's CUDA 13.0), seeing the main
#     Python's packages for everything else (--system-site-packages);
#  2. the extension built from a copy of the working tree (build/cuda-src, so
#     the CPU build's in-place _C.so stays) with FORCE_CUDA=1 for sm_80 and
#     sm_90: torch's CUDAExtension, its CUDA headers, linked;
#  3. imported, and checked through the dispatcher: every op has a CUDA kernel;
#  4. the test suite run against it (CUDA tests skip without a GPU; everything
#     else must pass);
#  5. the C++ library (CMake) built with RETINAFACE_WITH_CUDA=ON against the
#     same torch, and its test run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CUDA_VENV:-build/venv-cuda}
SRC=build/cuda-src
ARCHS=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
JOBS=${MAX_JOBS:-$(nproc)}
step() { printf '\n--- %s (%ss)\n' "$1" "$SECONDS"; }

if ! command -v nvcc >/dev/null 2>&1; then
  echo "nvcc not found: the CUDA build needs the CUDA 13.0 toolkit on PATH" >&2
  exit 1
fi
# The toolkit nvcc really runs from (nvcc on PATH may be a wrapper script).
CUDA_HOME=${CUDA_HOME:-$(dirname "$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
  sed -n 's/^#\$ _HERE_=//p' | head -n 1)")}
export CUDA_HOME

step "venv with the CUDA build of torch 2.13.0"
if ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.__version__ != "2.13.0+cu130")' 2>/dev/null; then
  # The wheel and its CUDA libraries: ~3 GB to download, ~5 GB installed.
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ "$free_kb" -lt $((12 * 1024 * 1024)) ]; then
    echo "not enough disk for the CUDA build of torch: $((free_kb / 1024 / 1024)) GB free in $(pwd)," \
      "12 GB needed (the wheel and its CUDA libraries are about 5 GB, plus the download and the build)" >&2
    exit 1
  fi
  rm -rf "$VENV"
  $PY -m venv --system-site-packages "$VENV"
  # --isolated: ignore this machine's pip configuration, which offers the local
  # CPU wheel of torch 2.13.0; --ignore-installed: the main Python's CPU torch
  # is visible through --system-site-packages and must not satisfy it.
  "$VENV/bin/python" -m pip install -q --isolated --disable-pip-version-check --ignore-installed torch==2.13.0
fi
VENV_PY=$(cd "$VENV" && pwd)/bin/python
"$VENV_PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'

step "build the extension with FORCE_CUDA=1 for $ARCHS"
rm -rf "$SRC"
mkdir -p "$SRC"
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - -f - | tar -x -C "$SRC" -f -
log=$(pwd)/build/cuda-build.log
if ! (cd "$SRC" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS" MAX_JOBS=$JOBS \
      "$VENV_PY" -m pip install --no-build-isolation --no-deps -v -e . >"$log" 2>&1); then
  tail -n 60 "$log"
  echo "CUDA build failed; full log: $log" >&2
  exit 1
fi
grep -c -- "-gencode=arch=compute_" "$log" | xargs printf '%s nvcc compilations\n'

step "import and dispatcher check"
(cd "$SRC" && "$VENV_PY" -m retinaface_ext info --require-cuda)

step "tests against the CUDA build"
(cd "$SRC" && "$VENV_PY" -m pytest tests -q -p no:cacheprovider)

# One architecture here: this step proves the CMake path; both are built above.
CMAKE_ARCHS=${RETINAFACE_CMAKE_CUDA_ARCHS:-9.0}
step "C++ library with CUDA (CMake, sm_${CMAKE_ARCHS/./})"
torch_prefix=$("$VENV_PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
# The wheel's CMake config looks for NVRTC in the toolkit; the wheel ships its own.
nvrtc=$("$VENV_PY" -c 'import glob, os, nvidia; print(sorted(glob.glob(os.path.join(
  nvidia.__path__[0], "*", "lib", "libnvrtc.so.*")))[0])')
TORCH_CUDA_ARCH_LIST="$CMAKE_ARCHS" cmake -S . -B build/cmake-cuda -DRETINAFACE_WITH_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" \
  -DCUDA_nvrtc_LIBRARY="$nvrtc" -DCMAKE_PREFIX_PATH="$torch_prefix" >build/cmake-cuda.log 2>&1 ||
  { tail -n 40 build/cmake-cuda.log; exit 1; }
cmake --build build/cmake-cuda -j"$JOBS" >>build/cmake-cuda.log 2>&1 || { tail -n 40 build/cmake-cuda.log; exit 1; }
ctest --test-dir build/cmake-cuda --output-on-failure
echo "CUDA build verified"
