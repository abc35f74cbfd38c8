// Forward kernels of AtsExtractPatches (registration: ../ops/extract_patches_ops.cc).
#include "extract_patches_kernel_base.h"
#include <cstring>
#include <limits>
#include <type_traits>

namespace ats {
namespace {

// Attributes shared by every device: fill value, scale and the output cap.
struct ForwardAttrs {
  float fill = 0;
  float scale = 1;
  int64_t max_output_bytes = 0;
};

template <typename Out>
absl::Status ReadAttrs(OpKernelConstruction* ctx, ForwardAttrs* attrs) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("fill_value", &attrs->fill));
  TF_RETURN_IF_ERROR(ctx->GetAttr("scale", &attrs->scale));
  TF_RETURN_IF_ERROR(ctx->GetAttr("max_output_bytes", &attrs->max_output_bytes));
  if (attrs->max_output_bytes <= 0) {
    return absl::InvalidArgumentError("max_output_bytes must be positive");
  }
  if constexpr (std::is_integral_v<Out>) {
    if (attrs->scale != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "scale must be 1 for integer output, got ", attrs->scale));
    }
    const float hi = static_cast<float>(std::numeric_limits<Out>::max());
    if (!(attrs->fill >= 0 && attrs->fill <= hi) ||
        attrs->fill != static_cast<float>(static_cast<Out>(attrs->fill))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fill_value must be an integer in [0, ", hi, "] for this output dtype, got ",
          attrs->fill));
    }
  }
  return absl::OkStatus();
}

// One output row: fill, the in-image span (memcpy when no conversion is
// needed, else one tight converting loop), fill.
template <typename In, typename Out>
void CopyRow(const In* images, const RowSpan& s, int len, float scale, Out fill,
             Out* dst) {
  std::fill(dst, dst + s.lo, fill);
  const In* src = images + s.src;
  const int n = s.hi - s.lo;
  if (std::is_same_v<In, Out> && scale == 1) {
    std::memcpy(dst + s.lo, src, sizeof(Out) * n);
  } else {
    Out* out = dst + s.lo;
    for (int i = 0; i < n; ++i) out[i] = Convert<In, Out>::apply(src[i], scale);
  }
  std::fill(dst + s.hi, dst + len, fill);
}

template <typename Device, typename In, typename Out>
struct Forward;

template <typename In, typename Out>
struct Forward<CPUDevice, In, Out> {
  static void Run(OpKernelContext* ctx, const PatchGeometry& g, const In* images,
                  const int* offsets, Out* out, const ForwardAttrs& attrs) {
    const int len = row_length(g);
    const Out fill = static_cast<Out>(attrs.fill);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(row_count(g), /*cost_per_unit=*/len * (sizeof(In) + sizeof(Out)),
                      [&](int64_t begin, int64_t end) {
                        for (int64_t row = begin; row < end; ++row) {
                          CopyRow(images, row_span(g, offsets, row), len, attrs.scale,
                                  fill, out + row * len);
                        }
                      });
  }
};

#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;

template <typename In, typename Out>
struct Forward<GPUDevice, In, Out> {
  static void Run(OpKernelContext* ctx, const PatchGeometry& g, const In* images,
                  const int* offsets, Out* out, const ForwardAttrs& attrs) {
    const char* err = LaunchExtractPatches(
        GpuTypeOf<In>::value, GpuTypeOf<Out>::value, g, images, offsets, out, attrs.scale,
        attrs.fill, ctx->eigen_device<GPUDevice>().stream());
    OP_REQUIRES(ctx, err == nullptr,
                absl::InternalError(absl::StrCat("AtsExtractPatches CUDA launch: ", err)));
  }
};
#endif

template <typename Device, typename In, typename Out>
class ExtractPatchesOp : public OpKernel {
 public:
  explicit ExtractPatchesOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs<Out>(ctx, &attrs_));
  }

  void Compute(OpKernelContext* ctx) override {
    PatchGeometry g;
    tensorflow::TensorShape out_shape;
    OP_REQUIRES_OK(ctx, ForwardGeometry(ctx->input(0), ctx->input(1), ctx->input(2),
                                        sizeof(Out), attrs_.max_output_bytes, &g,
                                        &out_shape));
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
    if (out->NumElements() == 0) return;
    Forward<Device, In, Out>::Run(ctx, g, ctx->input(0).flat<In>().data(),
                                  ctx->input(1).flat<int32_t>().data(),
                                  out->flat<Out>().data(), attrs_);
  }

 private:
  ForwardAttrs attrs_;
};

#define ATS_REGISTER(DEVICE, IN, OUT, ...)                            \
  REGISTER_KERNEL_BUILDER(Name("AtsExtractPatches")                   \
                              .Device(tensorflow::DEVICE_##DEVICE)    \
                              .TypeConstraint<IN>("T")                \
                              .TypeConstraint<OUT>("out_type")        \
                              __VA_ARGS__,                            \
                          ExtractPatchesOp<DEVICE##Device, IN, OUT>)

#define ATS_REGISTER_ALL(DEVICE, ...)                               \
  ATS_REGISTER(DEVICE, uint8_t, uint8_t, __VA_ARGS__);              \
  ATS_REGISTER(DEVICE, uint16_t, uint16_t, __VA_ARGS__);            \
  ATS_REGISTER(DEVICE, Eigen::half, Eigen::half, __VA_ARGS__);      \
  ATS_REGISTER(DEVICE, float, float, __VA_ARGS__);                  \
  ATS_REGISTER(DEVICE, double, double, __VA_ARGS__);                \
  ATS_REGISTER(DEVICE, uint8_t, float, __VA_ARGS__);                \
  ATS_REGISTER(DEVICE, uint16_t, float, __VA_ARGS__)

ATS_REGISTER_ALL(CPU, );
#if GOOGLE_CUDA
ATS_REGISTER_ALL(GPU, .HostMemory("patch_size"));
#endif

}  // namespace
}  // namespace ats
