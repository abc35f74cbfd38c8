#include "extract_patches_geometry.h"

#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tensorflow/core/framework/tensor_shape.h"

namespace ats {
namespace {

using tensorflow::Tensor;
using tensorflow::TensorShape;

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

std::string Show(const std::vector<int64_t>& dims) {
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "]");
}

// Product of dims, saturating at int64 max instead of overflowing.
int64_t SaturatingProduct(const std::vector<int64_t>& dims) {
  int64_t product = 1;
  for (int64_t d : dims) {
    if (d == 0) return 0;
    if (product > std::numeric_limits<int64_t>::max() / d) {
      product = std::numeric_limits<int64_t>::max();
    } else {
      product *= d;
    }
  }
  return product;
}

std::vector<int64_t> DimsOf(const TensorShape& shape) {
  std::vector<int64_t> dims;
  for (int i = 0; i < shape.dims(); ++i) dims.push_back(shape.dim_size(i));
  return dims;
}

std::vector<int64_t> ValuesOf(const Tensor& vector) {
  std::vector<int64_t> values;
  const auto flat = vector.flat<int32_t>();
  for (int64_t i = 0; i < flat.size(); ++i) values.push_back(flat(i));
  return values;
}

// Shared checks: `image` is (B, D..., C), `patch` holds n sizes.
absl::Status Build(const std::vector<int64_t>& image, const TensorShape& offsets,
                   const std::vector<int64_t>& patch, PatchGeometry* g,
                   std::vector<int64_t>* patches_dims) {
  const int rank = static_cast<int>(image.size());
  if (rank < 3 || rank > 5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "images must have rank 3, 4 or 5 (batch, 1 to 3 spatial dimensions, "
        "channels), got shape ", Show(image)));
  }
  const int n = rank - 2;
  if (offsets.dims() != 3 || offsets.dim_size(2) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "offsets must have shape (batch, n_patches, ", n, ") for images with ", n,
        " spatial dimension(s), got shape ", offsets.DebugString()));
  }
  if (offsets.dim_size(0) != image[0]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch size mismatch: images have ", image[0], " but offsets have ",
        offsets.dim_size(0)));
  }
  if (static_cast<int>(patch.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patch_size must have ", n, " value(s), one per spatial dimension, got ",
        Show(patch)));
  }
  for (int64_t p : patch) {
    if (p <= 0 || p > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "patch_size values must be in [1, ", kMaxDim, "], got ", Show(patch)));
    }
  }
  for (int64_t d : image) {
    if (d < 0 || d > kMaxDim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "image dimensions must be in [0, ", kMaxDim, "], got ", Show(image)));
    }
  }
  if (offsets.dim_size(1) > kMaxDim) {
    return absl::InvalidArgumentError(
        absl::StrCat("too many patches: ", offsets.dim_size(1)));
  }
  std::vector<int64_t> spatial(3 - n, 1), size(3 - n, 1);
  spatial.insert(spatial.end(), image.begin() + 1, image.end() - 1);
  size.insert(size.end(), patch.begin(), patch.end());
  *g = make_geometry(static_cast<int>(image[0]), static_cast<int>(offsets.dim_size(1)), n,
                     static_cast<int>(spatial[0]), static_cast<int>(spatial[1]),
                     static_cast<int>(spatial[2]), static_cast<int>(image.back()),
                     static_cast<int>(size[0]), static_cast<int>(size[1]),
                     static_cast<int>(size[2]));
  *patches_dims = {image[0], offsets.dim_size(1)};
  patches_dims->insert(patches_dims->end(), patch.begin(), patch.end());
  patches_dims->push_back(image.back());
  if (SaturatingProduct(*patches_dims) > kMaxOutputElements) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patches of shape ", Show(*patches_dims), " would have more than ",
        kMaxOutputElements, " elements"));
  }
  return absl::OkStatus();
}

absl::Status CheckSizeVector(const Tensor& t, const char* name) {
  if (t.dims() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        name, " must be a vector, got shape ", t.shape().DebugString()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ForwardGeometry(const Tensor& images, const Tensor& offsets,
                             const Tensor& patch_size, int64_t output_element_bytes,
                             int64_t max_output_bytes, PatchGeometry* geometry,
                             TensorShape* out_shape) {
  if (absl::Status s = CheckSizeVector(patch_size, "patch_size"); !s.ok()) return s;
  std::vector<int64_t> dims;
  if (absl::Status s = Build(DimsOf(images.shape()), offsets.shape(), ValuesOf(patch_size),
                             geometry, &dims);
      !s.ok()) {
    return s;
  }
  const int64_t elements = SaturatingProduct(dims);
  if (elements > max_output_bytes / output_element_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "patches of shape ", Show(dims), " would take ", elements * output_element_bytes,
        " bytes, more than max_output_bytes=", max_output_bytes));
  }
  return TensorShape::BuildTensorShape(dims, out_shape);
}

absl::Status GradGeometry(const Tensor& grad, const Tensor& offsets,
                          const Tensor& image_shape, PatchGeometry* geometry,
                          TensorShape* image_shape_out) {
  if (absl::Status s = CheckSizeVector(image_shape, "image_shape"); !s.ok()) return s;
  const std::vector<int64_t> image = ValuesOf(image_shape);
  if (image.size() < 3 || image.size() > 5) {
    return absl::InvalidArgumentError(absl::StrCat(
        "image_shape must have 3, 4 or 5 values, got ", Show(image)));
  }
  const std::vector<int64_t> grad_dims = DimsOf(grad.shape());
  const int n = static_cast<int>(image.size()) - 2;
  if (static_cast<int>(grad_dims.size()) != n + 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the patch gradient must have rank ", n + 3, " for an image of shape ",
        Show(image), ", got shape ", Show(grad_dims)));
  }
  const std::vector<int64_t> patch(grad_dims.begin() + 2, grad_dims.end() - 1);
  std::vector<int64_t> expected;
  if (absl::Status s = Build(image, offsets.shape(), patch, geometry, &expected); !s.ok()) {
    return s;
  }
  if (expected != grad_dims) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the patch gradient has shape ", Show(grad_dims), " but image_shape and offsets "
        "imply ", Show(expected)));
  }
  return TensorShape::BuildTensorShape(image, image_shape_out);
}

}  // namespace ats
