// CPU kernel of AtsResizeArea. For each output pixel, ResizeArea sums every
// input row it covers (first and last pixels weighted by their overlap) and
// then adds the row sums weighted by their rows' overlap, one output pixel
// after another, each chain of float additions waiting on its own latency.
// Here the covered rows are converted to float once and summed eight at a
// time, their chains interleaved, for all output columns of the row; then the
// weighted row sums are added for all columns at once: the same float
// operations in the same order for every output value, so the same results.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace ats {
namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// The input span of one output coordinate and the weights of its two ends.
struct Span {
  int64_t start;
  int64_t end;
  float start_scale;
  float last_scale;
  bool inside;  // the whole span lies in the image: no index needs bounding
};

inline int64_t Bound(int64_t value, int64_t limit) {
  return std::min(limit - 1, std::max<int64_t>(0, value));
}

// Weight of input cell v in the output cell [in0, in1): the formulas of
// ResizeArea, kept as they are so that the floats match.
inline float Overlap(int64_t v, float in0, float in1, float scale) {
  return v < in0 ? (v + 1 > in1 ? scale : v + 1 - in0) : (v + 1 > in1 ? in1 - v : 1.0f);
}

Span SpanOf(int64_t out, float scale, int64_t size) {
  const float in0 = out * scale;
  const float in1 = (out + 1) * scale;
  Span span;
  span.start = static_cast<int64_t>(std::floor(in0));
  span.end = static_cast<int64_t>(std::ceil(in1));
  span.start_scale = Overlap(span.start, in0, in1, scale);
  span.last_scale = Overlap(span.end - 1, in0, in1, scale);
  span.inside = span.start >= 0 && span.end <= size;
  return span;
}

// Rows summed side by side: one output column's chains for kRows rows are
// independent, so their additions overlap instead of waiting on each other.
constexpr size_t kRows = 8;

// One call's column spans and row buffer (a kernel may run on several threads at once).
class RowSummer {
 public:
  RowSummer(std::vector<Span> columns, int64_t in_width, int64_t channels)
      : columns_(std::move(columns)), in_width_(in_width), channels_(channels),
        pixels_(kRows * in_width * channels) {}

  // For each of the G rows, every output column's span summed as ResizeArea
  // sums it: first pixel times its weight, the middle ones, the last times
  // its weight, in that order. `sums`: G rows of out_width * channels.
  template <size_t G>
  void RowSums(const uint8_t* const* rows, float* sums) {
    const int64_t stride = in_width_ * channels_, width = static_cast<int64_t>(columns_.size()) * channels_;
    const float* p[G];
    for (size_t g = 0; g < G; ++g) {
      float* converted = pixels_.data() + g * stride;
      for (int64_t v = 0; v < stride; ++v) converted[v] = static_cast<float>(rows[g][v]);  // exact
      p[g] = converted;
    }
    for (size_t x = 0; x < columns_.size(); ++x) {
      const Span& span = columns_[x];
      const int64_t c_count = channels_;
      for (int64_t c = 0; c < c_count; ++c) {
        auto at = [&](int64_t v) { return (span.inside ? v : Bound(v, in_width_)) * c_count + c; };
        float s[G];
        for (size_t g = 0; g < G; ++g) s[g] = p[g][at(span.start)] * span.start_scale;
        if (span.start + 1 != span.end) {
          for (int64_t v = span.start + 1; v < span.end - 1; ++v) {
            const int64_t k = at(v);
            for (size_t g = 0; g < G; ++g) s[g] += p[g][k];
          }
          const int64_t last = at(span.end - 1);
          for (size_t g = 0; g < G; ++g) s[g] += p[g][last] * span.last_scale;
        }
        for (size_t g = 0; g < G; ++g) sums[g * width + x * c_count + c] = s[g];
      }
    }
  }

  std::vector<Span> columns_;
  int64_t in_width_, channels_;
  std::vector<float> pixels_;  // kRows rows as floats
};

class ResizeAreaOp : public OpKernel {
 public:
  explicit ResizeAreaOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& images = context->input(0);
    const Tensor& size = context->input(1);
    OP_REQUIRES(context, images.dims() == 4,
                absl::InvalidArgumentError(absl::StrCat("images must have rank 4, got ", images.dims())));
    OP_REQUIRES(context, size.dims() == 1 && size.NumElements() == 2,
                absl::InvalidArgumentError("size must hold 2 values: new height and width"));
    const int64_t batch = images.dim_size(0), in_height = images.dim_size(1);
    const int64_t in_width = images.dim_size(2), channels = images.dim_size(3);
    const int64_t out_height = size.vec<int32_t>()(0), out_width = size.vec<int32_t>()(1);
    OP_REQUIRES(context, out_height > 0 && out_width > 0,
                absl::InvalidArgumentError(
                    absl::StrCat("size must be positive, got ", out_height, "x", out_width)));
    OP_REQUIRES(context, in_height > 0 && in_width > 0,
                absl::InvalidArgumentError("images must have at least one pixel"));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({batch, out_height, out_width, channels}), &output));
    if (output->NumElements() == 0) return;

    const float height_scale = static_cast<float>(in_height) / out_height;
    const float width_scale = static_cast<float>(in_width) / out_width;
    const float scale = 1.0 / (height_scale * width_scale);
    std::vector<Span> columns(out_width);
    for (int64_t x = 0; x < out_width; ++x) columns[x] = SpanOf(x, width_scale, in_width);
    RowSummer summer(std::move(columns), in_width, channels);

    const uint8_t* in = images.flat<uint8_t>().data();
    float* out = output->flat<float>().data();
    const int64_t row_stride = in_width * channels;
    std::vector<const uint8_t*> rows;
    std::vector<float> row_scales, sums;
    for (int64_t b = 0; b < batch; ++b) {
      const uint8_t* image = in + b * in_height * row_stride;
      for (int64_t y = 0; y < out_height; ++y) {
        const float in0 = y * height_scale;
        const float in1 = (y + 1) * height_scale;
        const int64_t first = static_cast<int64_t>(std::floor(in0));
        const int64_t end = static_cast<int64_t>(std::ceil(in1));
        rows.clear();
        row_scales.clear();
        for (int64_t i = first; i < end; ++i) {
          row_scales.push_back(Overlap(i, in0, in1, height_scale));
          rows.push_back(image + Bound(i, in_height) * row_stride);
        }
        // Each covered row summed over every output column's span, kRows
        // rows at a time, then the rows weighted and added in order.
        const size_t n = rows.size();
        const int64_t width = out_width * channels;
        sums.resize(n * width);
        size_t i = 0;
        for (; i + kRows <= n; i += kRows) summer.RowSums<kRows>(rows.data() + i, sums.data() + i * width);
        if (i + 4 <= n) summer.RowSums<4>(rows.data() + i, sums.data() + i * width), i += 4;
        if (i + 2 <= n) summer.RowSums<2>(rows.data() + i, sums.data() + i * width), i += 2;
        if (i < n) summer.RowSums<1>(rows.data() + i, sums.data() + i * width);
        for (int64_t k = 0; k < width; ++k) {
          float total = 0;
          for (size_t i = 0; i < n; ++i) total += sums[i * width + k] * row_scales[i];
          out[k] = total * scale;
        }
        out += width;
      }
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("AtsResizeArea").Device(tensorflow::DEVICE_CPU).HostMemory("size"),
                        ResizeAreaOp);

}  // namespace
}  // namespace ats
