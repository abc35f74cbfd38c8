// GPU launchers of the patch op, callable from g++-compiled TF kernels:
// no CUDA or TensorFlow types cross this boundary (streams are void*).
#ifndef ATS_EXTRACT_PATCHES_GPU_H_
#define ATS_EXTRACT_PATCHES_GPU_H_

#include "extract_patches_gpu.cu.h"

namespace ats {

// Element types the GPU launchers know (half is IEEE binary16 in both
// Eigen::half and __half, so the same bits travel through void pointers).
enum class GpuType { kUint8, kUint16, kHalf, kFloat, kDouble };

// Each returns nullptr on success, else the CUDA error string.
const char* LaunchExtractPatches(GpuType in, GpuType out, const PatchGeometry& g,
                                 const void* images, const int* offsets, void* patches,
                                 float scale, float fill, void* stream);

const char* LaunchExtractPatchesGrad(GpuType type, const PatchGeometry& g,
                                     const void* grad, const int* offsets,
                                     void* image_grad, long long image_elements,
                                     float scale, void* stream);

}  // namespace ats

#endif  // ATS_EXTRACT_PATCHES_GPU_H_
