// Kernels of AtsExtractPatchesGrad: the adjoint of AtsExtractPatches, a
// scatter-add of patch gradients into a zero image (outside pixels dropped).
#include "extract_patches_kernel_base.h"

namespace ats {
namespace {

template <typename Device, typename T>
struct Backward;

// Parallel over image rows (b, y0, y1): each row is owned by one thread and
// receives its patches' contributions in patch order, so the result is
// deterministic and needs no atomics.
template <typename T>
struct Backward<CPUDevice, T> {
  static void Run(OpKernelContext* ctx, const PatchGeometry& g, const T* grad,
                  const int* offsets, T* image_grad, float scale) {
    const int64_t image_row = int64_t{g.image[2]} * g.channels;
    const int64_t rows = int64_t{g.batch} * g.image[0] * g.image[1];
    const int len = row_length(g);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(
        rows, /*cost_per_unit=*/image_row * sizeof(T) + 8 * g.n_patches,
        [&](int64_t begin, int64_t end) {
          for (int64_t r = begin; r < end; ++r) {
            std::fill(image_grad + r * image_row, image_grad + (r + 1) * image_row, T(0));
            const int64_t y1 = r % g.image[1];
            const int64_t y0 = (r / g.image[1]) % g.image[0];
            const int64_t b = r / (int64_t{g.image[1]} * g.image[0]);
            for (int64_t k = 0; k < g.n_patches; ++k) {
              const int64_t patch = b * g.n_patches + k;
              const int64_t x0 = y0 - patch_start(g, offsets, patch, 0);
              const int64_t x1 = y1 - patch_start(g, offsets, patch, 1);
              if (x0 < 0 || x0 >= g.patch[0] || x1 < 0 || x1 >= g.patch[1]) continue;
              const int64_t row = (patch * g.patch[0] + x0) * g.patch[1] + x1;
              const RowSpan s = row_span(g, offsets, row);
              const T* src = grad + row * len;
              T* dst = image_grad + s.src - s.lo;
              for (int i = s.lo; i < s.hi; ++i) dst[i] += Convert<T, T>::apply(src[i], scale);
            }
          }
        });
  }
};

#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;

template <typename T>
struct Backward<GPUDevice, T> {
  static void Run(OpKernelContext* ctx, const PatchGeometry& g, const T* grad,
                  const int* offsets, T* image_grad, float scale) {
    const int64_t elements = ctx->mutable_output(0)->NumElements();
    const char* err =
        LaunchExtractPatchesGrad(GpuTypeOf<T>::value, g, grad, offsets, image_grad,
                                 elements, scale, ctx->eigen_device<GPUDevice>().stream());
    OP_REQUIRES(ctx, err == nullptr, absl::InternalError(absl::StrCat(
                                         "AtsExtractPatchesGrad CUDA launch: ", err)));
  }
};
#endif

template <typename Device, typename T>
class ExtractPatchesGradOp : public OpKernel {
 public:
  explicit ExtractPatchesGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    PatchGeometry g;
    tensorflow::TensorShape image_shape;
    OP_REQUIRES_OK(ctx, GradGeometry(ctx->input(0), ctx->input(1), ctx->input(2), &g,
                                     &image_shape));
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, image_shape, &out));
    if (out->NumElements() == 0) return;
    Backward<Device, T>::Run(ctx, g, ctx->input(0).flat<T>().data(),
                             ctx->input(1).flat<int32_t>().data(), out->flat<T>().data(),
                             scale_);
  }

 private:
  float scale_ = 1;
};

#define ATS_REGISTER(DEVICE, T, ...)                                                \
  REGISTER_KERNEL_BUILDER(                                                          \
      Name("AtsExtractPatchesGrad").Device(tensorflow::DEVICE_##DEVICE).TypeConstraint<T>("T") \
          __VA_ARGS__,                                                              \
      ExtractPatchesGradOp<DEVICE##Device, T>)

#define ATS_REGISTER_ALL(DEVICE, ...)          \
  ATS_REGISTER(DEVICE, Eigen::half, __VA_ARGS__); \
  ATS_REGISTER(DEVICE, float, __VA_ARGS__);       \
  ATS_REGISTER(DEVICE, double, __VA_ARGS__)

ATS_REGISTER_ALL(CPU, );
#if GOOGLE_CUDA
ATS_REGISTER_ALL(GPU, .HostMemory("image_shape"));
#endif

}  // namespace
}  // namespace ats
