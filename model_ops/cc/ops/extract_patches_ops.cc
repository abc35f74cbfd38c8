// Registration and shape inference of AtsExtractPatches and its gradient.
// The "Ats" prefix keeps the names clear of TensorFlow's own ExtractPatches
// ops and of the original library's op.
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace ats {
namespace {

using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

absl::Status Invalid(InferenceContext* c, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(what, " (in ", c->DebugString(), ")"));
}

// Spatial dimensions n from whichever input knows it, or -1. `size` holds
// n + `extra` values (patch_size: 0, image_shape: 2).
int64_t SpatialDims(InferenceContext* c, ShapeHandle image, ShapeHandle offsets,
                    ShapeHandle size, int extra) {
  if (c->RankKnown(image)) return c->Rank(image) - 2;
  if (c->RankKnown(offsets) && c->ValueKnown(c->Dim(offsets, 2))) {
    return c->Value(c->Dim(offsets, 2));
  }
  if (c->RankKnown(size) && c->ValueKnown(c->Dim(size, 0))) {
    return c->Value(c->Dim(size, 0)) - extra;
  }
  return -1;
}

// Checks ranks and the batch, and returns n (-1 when nothing tells it).
absl::Status CheckInputs(InferenceContext* c, ShapeHandle* image, ShapeHandle offsets,
                         ShapeHandle size_vector, const char* size_name, int extra,
                         DimensionHandle* batch, int64_t* n) {
  if (c->RankKnown(offsets) && c->Rank(offsets) != 3) {
    return Invalid(c, absl::StrCat("offsets must have rank 3 (batch, n_patches, n), got ",
                                   c->DebugString(offsets)));
  }
  if (c->RankKnown(size_vector) && c->Rank(size_vector) != 1) {
    return Invalid(c, absl::StrCat(size_name, " must be a vector, got ",
                                   c->DebugString(size_vector)));
  }
  *n = SpatialDims(c, *image, offsets, size_vector, extra);
  if (*n == -1) return absl::OkStatus();
  if (*n < 1 || *n > 3) {
    return Invalid(c, absl::StrCat("images must have rank 3, 4 or 5 (batch, 1 to 3 spatial "
                                   "dimensions, channels), got ", c->DebugString(*image)));
  }
  DimensionHandle unused;
  if (!c->WithRank(*image, *n + 2, image).ok() ||
      !c->WithRank(offsets, 3, &offsets).ok() ||
      !c->WithValue(c->Dim(offsets, 2), *n, &unused).ok()) {
    return Invalid(c, absl::StrCat("offsets must have shape (batch, n_patches, ", *n,
                                   ") for images with ", *n, " spatial dimension(s), got ",
                                   c->DebugString(offsets), " for images ",
                                   c->DebugString(*image)));
  }
  if (!c->WithRank(size_vector, 1, &size_vector).ok() ||
      !c->WithValue(c->Dim(size_vector, 0), *n + extra, &unused).ok()) {
    return Invalid(c, absl::StrCat(size_name, " must have ", *n + extra, " value(s), got shape ",
                                   c->DebugString(size_vector)));
  }
  if (!c->Merge(c->Dim(*image, 0), c->Dim(offsets, 0), batch).ok()) {
    return Invalid(c, absl::StrCat("batch size mismatch: images ", c->DebugString(*image),
                                   ", offsets ", c->DebugString(offsets)));
  }
  return absl::OkStatus();
}

absl::Status ForwardShape(InferenceContext* c) {
  ShapeHandle image = c->input(0);
  DimensionHandle batch;
  int64_t n;
  TF_RETURN_IF_ERROR(CheckInputs(c, &image, c->input(1), c->input(2), "patch_size", 0, &batch, &n));
  if (n == -1) {
    c->set_output(0, c->UnknownShape());
    return absl::OkStatus();
  }
  ShapeHandle patch;
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(2, &patch));
  TF_RETURN_IF_ERROR(c->WithRank(patch, n, &patch));
  for (int i = 0; i < n; ++i) {
    const DimensionHandle d = c->Dim(patch, i);
    if (c->ValueKnown(d) && c->Value(d) <= 0) {
      return Invalid(c, absl::StrCat("patch_size values must be positive, got ",
                                     c->DebugString(patch)));
    }
  }
  ShapeHandle out = c->MakeShape({batch, c->Dim(c->input(1), 1)});
  TF_RETURN_IF_ERROR(c->Concatenate(out, patch, &out));
  TF_RETURN_IF_ERROR(c->Concatenate(out, c->Vector(c->Dim(image, n + 1)), &out));
  c->set_output(0, out);
  return absl::OkStatus();
}

absl::Status GradShape(InferenceContext* c) {
  ShapeHandle image;
  TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(2, &image));
  DimensionHandle batch;
  int64_t n;
  TF_RETURN_IF_ERROR(CheckInputs(c, &image, c->input(1), c->input(2), "image_shape", 2, &batch, &n));
  if (n != -1) {
    ShapeHandle unused;
    if (!c->WithRank(c->input(0), n + 3, &unused).ok()) {
      return Invalid(c, absl::StrCat("the patch gradient must have rank ", n + 3, ", got ",
                                     c->DebugString(c->input(0))));
    }
  }
  c->set_output(0, image);
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("AtsExtractPatches")
    .Input("images: T")
    .Input("offsets: int32")
    .Input("patch_size: int32")
    .Output("patches: out_type")
    .Attr("T: {uint8, uint16, half, float, double}")
    .Attr("out_type: {uint8, uint16, half, float, double}")
    .Attr("fill_value: float = 0")
    .Attr("scale: float = 1")
    .Attr("max_output_bytes: int = 4294967296")
    .SetShapeFn(ForwardShape)
    .Doc(R"doc(
Cuts patches of `patch_size` from `images` (B, D1..Dn, C), n in 1..3, with
top-left corners `offsets` (B, N, n); pixels outside the image are
`fill_value` (in output units), never clamped. Output (B, N, *patch_size, C)
of `out_type`, which is T, or float for uint8/uint16 input (then each value
is multiplied by `scale`).
)doc");

REGISTER_OP("AtsExtractPatchesGrad")
    .Input("grad: T")
    .Input("offsets: int32")
    .Input("image_shape: int32")
    .Output("image_grad: T")
    .Attr("T: {half, float, double}")
    .Attr("scale: float = 1")
    .SetShapeFn(GradShape)
    .Doc(R"doc(
Adjoint of AtsExtractPatches: adds `grad` (B, N, *patch_size, C) times `scale`
into a zero image of `image_shape`; overlapping patches accumulate and values
of pixels outside the image are dropped.
)doc");

}  // namespace ats
