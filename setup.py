"""Builds retinaface_ext._C: CPU kernels always, CUDA kernels when they can be built.

The CUDA sources are compiled when torch was built with CUDA and nvcc is found
(CUDA_HOME), or when FORCE_CUDA=1. TORCH_CUDA_ARCH_LIST picks the GPU
architectures, as for any torch extension. Install with
``pip install --no-build-isolation -e .`` so the build uses the torch you have.
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def locate_cuda_toolkit():
    """Sets CUDA_HOME to the toolkit nvcc runs from, when nvcc on PATH is a wrapper outside it.

    torch takes CUDA_HOME (or CUDA_PATH) if set, else the folder above the
    folder of the first nvcc on PATH. Where that nvcc is a wrapper script
    (/usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc, conda
    shims), that guess has no include/cuda_runtime.h and the build fails
    with "cuda_runtime.h: No such file or directory". nvcc --dryrun names the
    folder it really runs from.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.exists(os.path.join(guess, "include", "cuda_runtime.h")):
        return
    try:
        dryrun = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return
    match = re.search(r"^#\$ _HERE_=(.+)$", dryrun, re.MULTILINE)
    if match:
        toolkit = os.path.dirname(match.group(1).strip())
        if os.path.exists(os.path.join(toolkit, "include", "cuda_runtime.h")):
            print(f"setup.py: CUDA toolkit {toolkit} (from {nvcc} --dryrun)")
            os.environ["CUDA_HOME"] = toolkit


locate_cuda_toolkit()

import torch  # noqa: E402  (after CUDA_HOME is settled: cpp_extension reads it at import)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def build_with_cuda():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def sources(pattern):
    # Relative paths: setuptools refuses absolute ones in an editable build.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# What csrc/io/jpeg_region.cpp needs of libjpeg-turbo (>= 1.5): IJG's libjpeg 9 ships a
# jpeglib.h too, without any of it.
_LIBJPEG_TURBO_PROBE = r"""
#include <stdio.h>
#include <jpeglib.h>
int main(void) {
  struct jpeg_decompress_struct info;
  JDIMENSION x = 0, width = 1;
  info.out_color_space = JCS_EXT_BGR;
  jpeg_crop_scanline(&info, &x, &width);
  return (int)jpeg_skip_scanlines(&info, 1);
}
"""


def libjpeg_turbo():
    """(include dir, library dir or None) of a libjpeg-turbo this build can use, or None.

    Found where a small program using the functions we call compiles and links
    with it, so a missing libjpeg, IJG's libjpeg or headers without the library
    skip the region decoder (the loader then decodes whole images) instead of
    failing the build.
    """
    if os.environ.get("RETINAFACE_NO_LIBJPEG", "0") == "1":
        return None
    candidates = [os.environ.get("LIBJPEG_INCLUDE_DIR"), "/usr/include", "/usr/local/include"]
    include = next((d for d in candidates if d and os.path.isfile(os.path.join(d, "jpeglib.h"))), None)
    if include is None:
        return None
    library = os.path.join(os.path.dirname(include), "lib")
    library = library if os.path.isdir(library) else None
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "probe.c")
        with open(source, "w") as handle:
            handle.write(_LIBJPEG_TURBO_PROBE)
        command = compiler + [source, "-I", include] + (["-L", library] if library else []) + [
            "-ljpeg", "-o", os.path.join(folder, "probe")]
        try:
            linked = subprocess.run(command, capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            linked = False
    if not linked:
        print(f"setup.py: no libjpeg-turbo >= 1.5 found with {include}/jpeglib.h: JPEGs are decoded whole")
        return None
    return include, library


def make_extension():
    cpu_sources = sources("csrc/ops.cpp") + sources("csrc/python_module.cpp") + sources("csrc/cpu/*.cpp")
    cxx_flags = ["-O3"]
    link_flags = []
    libraries = []
    # The training loader decodes only the crop of each JPEG (csrc/io/jpeg_region.cpp) when
    # libjpeg-turbo's headers are here (Debian/Ubuntu: libjpeg-turbo8-dev or libjpeg62-turbo-dev).
    jpeg = libjpeg_turbo()
    jpeg_include, jpeg_library = jpeg if jpeg is not None else (None, None)
    if jpeg is not None:
        cpu_sources += sources("csrc/io/*.cpp")
        libraries.append("jpeg")
    if sys.platform.startswith("linux"):
        # at::parallel_for expands to an OpenMP region inline in our kernels.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    include_dirs = [os.path.join(ROOT, "csrc")] + ([jpeg_include] if jpeg_include not in (None, "/usr/include") else [])
    library_dirs = [jpeg_library] if jpeg_library not in (None, "/usr/lib") else []

    if not build_with_cuda():
        return CppExtension(
            "retinaface_ext._C",
            cpu_sources,
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
            libraries=libraries,
        )
    return CUDAExtension(
        "retinaface_ext._C",
        cpu_sources + sources("csrc/cuda/*.cpp") + sources("csrc/cuda/*.cu"),
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        define_macros=[("WITH_CUDA", None)],
        # -fmad=false keeps the CPU's float rounding (see csrc/common/box_math.h).
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-fmad=false", "--expt-relaxed-constexpr"]},
        extra_link_args=link_flags,
        libraries=libraries,
    )


setup(
    packages=find_packages(include=["retinaface_ext", "retinaface_ext.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)},
)
