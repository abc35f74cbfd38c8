// Patch geometry and the CUDA kernels of the patch op.
//
// This header has no TensorFlow (or standard library) includes so that it
// compiles three ways: into the TF op's CPU kernels (plain C++: geometry and
// conversions only), into the TF op's GPU launchers (nvcc), and standalone
// through CuPy's RawModule (NVRTC) to test the kernels on a GPU without TF.
//
// Layout: an image (B, D0, D1, D2, C) is cut into patches (B, N, P0, P1, P2, C).
// Images with fewer spatial dimensions are padded in front with size-1 dims
// whose offset is 0, so one code path serves 1-D, 2-D and 3-D. The output is a
// sequence of "rows" of P2*C contiguous values; each row maps to at most one
// contiguous span of the image, everything else in the row is the fill value.
#ifndef ATS_EXTRACT_PATCHES_GPU_CU_H_
#define ATS_EXTRACT_PATCHES_GPU_CU_H_

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define ATS_HD __host__ __device__
#else
#define ATS_HD
#endif

namespace ats {

struct PatchGeometry {
  int batch;
  int n_patches;
  int n_dims;     // spatial dimensions of the caller's image: 1, 2 or 3
  int image[3];   // D0, D1, D2 (padded in front with 1)
  int channels;
  int patch[3];   // P0, P1, P2 (padded in front with 1)
};

// The part of one output row that comes from the image: values [lo, hi) of
// the row are image[src .. src + hi - lo); lo == hi means the row is all fill.
struct RowSpan {
  long long src;
  int lo;
  int hi;
};

ATS_HD inline PatchGeometry make_geometry(int batch, int n_patches, int n_dims,
                                          int d0, int d1, int d2, int channels,
                                          int p0, int p1, int p2) {
  PatchGeometry g;
  g.batch = batch;
  g.n_patches = n_patches;
  g.n_dims = n_dims;
  g.image[0] = d0;
  g.image[1] = d1;
  g.image[2] = d2;
  g.channels = channels;
  g.patch[0] = p0;
  g.patch[1] = p1;
  g.patch[2] = p2;
  return g;
}

ATS_HD inline long long row_count(const PatchGeometry& g) {
  return (long long)g.batch * g.n_patches * g.patch[0] * g.patch[1];
}

ATS_HD inline int row_length(const PatchGeometry& g) {
  return g.patch[2] * g.channels;
}

// Offset of patch (b*N + k) along padded dimension d (0 for padding dims).
ATS_HD inline long long patch_start(const PatchGeometry& g, const int* offsets,
                                    long long patch, int d) {
  const int pad = 3 - g.n_dims;
  return d < pad ? 0 : offsets[patch * g.n_dims + d - pad];
}

// Where output row `row` (flat index over B, N, P0, P1) reads the image.
// Offsets may take any int32 value: arithmetic is 64-bit, nothing is clamped.
ATS_HD inline RowSpan row_span(const PatchGeometry& g, const int* offsets,
                               long long row) {
  RowSpan s;
  s.src = 0;
  s.lo = 0;
  s.hi = 0;
  const long long x1 = row % g.patch[1];
  row /= g.patch[1];
  const long long x0 = row % g.patch[0];
  const long long patch = row / g.patch[0];
  const long long b = patch / g.n_patches;
  const long long y0 = patch_start(g, offsets, patch, 0) + x0;
  const long long y1 = patch_start(g, offsets, patch, 1) + x1;
  if (y0 < 0 || y0 >= g.image[0] || y1 < 0 || y1 >= g.image[1]) return s;
  const long long start = patch_start(g, offsets, patch, 2);
  const long long first = start < 0 ? -start : 0;
  const long long end = g.image[2] - start;
  const long long last = end < g.patch[2] ? end : g.patch[2];
  if (first >= last) return s;
  s.lo = (int)(first * g.channels);
  s.hi = (int)(last * g.channels);
  s.src = (((b * g.image[0] + y0) * g.image[1] + y1) * g.image[2] + start + first) *
          g.channels;
  return s;
}

// out = in * scale, computed in double for double and in float otherwise
// (exact for every uint8/uint16/half value when scale == 1).
template <typename In, typename Out>
struct Convert {
  ATS_HD static Out apply(In v, float scale) {
    return static_cast<Out>(static_cast<float>(v) * scale);
  }
};

template <>
struct Convert<double, double> {
  ATS_HD static double apply(double v, float scale) { return v * (double)scale; }
};

// Threads per block (x over a row's values, y over rows) for rows of `len`:
// 256 threads, so at most kMaxRowsPerBlock rows per block.
constexpr int kMaxRowsPerBlock = 8;
ATS_HD inline void launch_shape(int len, int* threads_x, int* threads_y) {
  int x = 32;
  while (x < len && x < 256) x *= 2;
  *threads_x = x;
  *threads_y = 256 / x;
}

#ifdef __CUDACC__

// Blocks stride over rows (a grid of any size covers them all): blockDim.y
// rows at a time, the loop's bound the same for every thread of a block.
__device__ inline long long first_row() {
  return (long long)blockIdx.x * blockDim.y + threadIdx.y;
}
__device__ inline long long row_stride() { return (long long)gridDim.x * blockDim.y; }

// The span of this thread's row, computed once per row (its 64-bit divisions
// cost more than copying a row of bytes) and shared through shared memory.
// Every thread of the block must call it: it holds barriers.
__device__ inline RowSpan shared_row_span(const PatchGeometry& g, const int* offsets,
                                          long long row) {
  __shared__ RowSpan spans[kMaxRowsPerBlock];
  __syncthreads();  // the previous rows' spans are read by now
  if (threadIdx.x == 0 && row < row_count(g)) spans[threadIdx.y] = row_span(g, offsets, row);
  __syncthreads();
  return spans[threadIdx.y];
}

// Forward: one thread per output value, consecutive threads write consecutive
// values (and read consecutive image values): coalesced on both sides.
template <typename In, typename Out>
__global__ void extract_patches_kernel(const In* __restrict__ images,
                                       const int* __restrict__ offsets,
                                       Out* __restrict__ out, int batch,
                                       int n_patches, int n_dims, int d0, int d1,
                                       int d2, int channels, int p0, int p1, int p2,
                                       float scale, float fill) {
  const PatchGeometry g =
      make_geometry(batch, n_patches, n_dims, d0, d1, d2, channels, p0, p1, p2);
  const int len = row_length(g);
  const Out fill_value = static_cast<Out>(fill);
  for (long long row = first_row(); row - threadIdx.y < row_count(g); row += row_stride()) {
    const RowSpan s = shared_row_span(g, offsets, row);
    if (row < row_count(g)) {
      Out* dst = out + row * len;
      for (int col = threadIdx.x; col < len; col += blockDim.x) {
        dst[col] = (col >= s.lo && col < s.hi)
                       ? Convert<In, Out>::apply(images[s.src + col - s.lo], scale)
                       : fill_value;
      }
    }
  }
}

// Gradient: scatter-add of patch values into a zeroed image gradient.
// Overlapping patches meet in atomicAdd (order, hence rounding, not fixed).
template <typename T>
__global__ void extract_patches_grad_kernel(const T* __restrict__ grad,
                                            const int* __restrict__ offsets,
                                            T* __restrict__ image_grad, int batch,
                                            int n_patches, int n_dims, int d0,
                                            int d1, int d2, int channels, int p0,
                                            int p1, int p2, float scale) {
  const PatchGeometry g =
      make_geometry(batch, n_patches, n_dims, d0, d1, d2, channels, p0, p1, p2);
  for (long long row = first_row(); row - threadIdx.y < row_count(g); row += row_stride()) {
    const RowSpan s = shared_row_span(g, offsets, row);
    const T* src = grad + row * row_length(g);
    for (int col = s.lo + threadIdx.x; row < row_count(g) && col < s.hi; col += blockDim.x) {
      atomicAdd(image_grad + s.src + col - s.lo, Convert<T, T>::apply(src[col], scale));
    }
  }
}

#endif  // __CUDACC__

}  // namespace ats

#endif  // ATS_EXTRACT_PATCHES_GPU_CU_H_
