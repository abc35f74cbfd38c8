// Validation of the patch op's inputs: every bad shape or size becomes an
// InvalidArgument status naming the problem, before any memory is touched.
#ifndef ATS_EXTRACT_PATCHES_GEOMETRY_H_
#define ATS_EXTRACT_PATCHES_GEOMETRY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "extract_patches_gpu.cu.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace ats {

// Kernels index outputs (and patch gradients) with 32-bit values per row and
// rows with 64-bit values; more than this many elements is refused outright.
inline constexpr int64_t kMaxOutputElements = (int64_t{1} << 31) - 1;

// Geometry of the forward op; `out_shape` is (B, N, *patch_size, C).
absl::Status ForwardGeometry(const tensorflow::Tensor& images,
                             const tensorflow::Tensor& offsets,
                             const tensorflow::Tensor& patch_size,
                             int64_t output_element_bytes, int64_t max_output_bytes,
                             PatchGeometry* geometry, tensorflow::TensorShape* out_shape);

// Geometry of the gradient op; `image_shape_out` is the image gradient's shape.
absl::Status GradGeometry(const tensorflow::Tensor& grad,
                          const tensorflow::Tensor& offsets,
                          const tensorflow::Tensor& image_shape, PatchGeometry* geometry,
                          tensorflow::TensorShape* image_shape_out);

}  // namespace ats

#endif  // ATS_EXTRACT_PATCHES_GEOMETRY_H_
