// extern "C" entry points over the patch op's GPU launchers, so that Python
// (ctypes) calls the exact host code TensorFlow's op calls, built by nvcc.
#include "extract_patches_gpu.h"

namespace {
ats::PatchGeometry geometry(const int* g) {
  return ats::make_geometry(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9]);
}
}  // namespace

extern "C" const char* ats_launch_extract_patches(int in, int out, const int* g,
                                                  const void* images, const int* offsets,
                                                  void* patches, float scale, float fill,
                                                  void* stream) {
  return ats::LaunchExtractPatches(static_cast<ats::GpuType>(in), static_cast<ats::GpuType>(out),
                                   geometry(g), images, offsets, patches, scale, fill, stream);
}

extern "C" const char* ats_launch_extract_patches_grad(int type, const int* g, const void* grad,
                                                       const int* offsets, void* image_grad,
                                                       long long image_elements, float scale,
                                                       void* stream) {
  return ats::LaunchExtractPatchesGrad(static_cast<ats::GpuType>(type), geometry(g), grad, offsets,
                                       image_grad, image_elements, scale, stream);
}
