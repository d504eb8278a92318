// The vector instruction sets that CPU kernels choose between at run time
// (align_faces' sampling loops, train_augment's distortion and resize
// passes, mobilenet_stem), and the one switch that lowers the choice:
// RETINAFACE_CPU_ISA=avx2 or =baseline makes those kernels run the code they
// run on a CPU without AVX-512 (or without AVX2), so that tests and
// benchmarks cover each variant on one machine. Each kernel decides what it
// needs of the CPU for a level. Functions cloned by the compiler
// (RF_VECTOR_CLONES) are picked by the loader and do not follow the switch.
#pragma once

#include <cstdlib>
#include <cstring>

namespace retinaface {

enum class CpuIsa : int { baseline = 0, avx2 = 1, avx512 = 2 };

// `supported` (the best level this CPU runs for a kernel), lowered to the
// level RETINAFACE_CPU_ISA names (avx512, avx2, baseline) when that is lower.
inline CpuIsa capped_by_environment(CpuIsa supported) {
  const char* cap = std::getenv("RETINAFACE_CPU_ISA");
  CpuIsa limit = CpuIsa::avx512;
  if (cap != nullptr && std::strcmp(cap, "avx2") == 0) limit = CpuIsa::avx2;
  if (cap != nullptr && std::strcmp(cap, "baseline") == 0) limit = CpuIsa::baseline;
  return supported < limit ? supported : limit;
}

}  // namespace retinaface
