// Maps the TF kernels' element types to the GPU launchers' GpuType tags.
#ifndef ATS_EXTRACT_PATCHES_GPU_TYPES_H_
#define ATS_EXTRACT_PATCHES_GPU_TYPES_H_

#include <cstdint>

#include "extract_patches_gpu.h"
#include "tensorflow/core/framework/numeric_types.h"

namespace ats {

template <typename T>
struct GpuTypeOf;
template <>
struct GpuTypeOf<uint8_t> { static constexpr GpuType value = GpuType::kUint8; };
template <>
struct GpuTypeOf<uint16_t> { static constexpr GpuType value = GpuType::kUint16; };
template <>
struct GpuTypeOf<Eigen::half> { static constexpr GpuType value = GpuType::kHalf; };
template <>
struct GpuTypeOf<float> { static constexpr GpuType value = GpuType::kFloat; };
template <>
struct GpuTypeOf<double> { static constexpr GpuType value = GpuType::kDouble; };

}  // namespace ats

#endif  // ATS_EXTRACT_PATCHES_GPU_TYPES_H_
