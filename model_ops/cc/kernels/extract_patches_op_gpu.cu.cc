// Instantiates the CUDA kernels of extract_patches_gpu.cu.h for every dtype
// pair the op registers and launches them on TensorFlow's stream.
#include <cuda_runtime.h>

#include "extract_patches_gpu.h"

namespace ats {
namespace {

// One block per blockDim.y rows, at most as many blocks as the GPU holds at
// once (the kernels stride over the rest): fewer, longer-lived blocks.
dim3 grid_for(const PatchGeometry& g, dim3* block) {
  int tx, ty;
  launch_shape(row_length(g), &tx, &ty);
  *block = dim3(tx, ty);
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const long long resident = sms > 0 ? (long long)sms * (2048 / (tx * ty)) : 65535;
  const long long wanted = (row_count(g) + ty - 1) / ty;
  return dim3((unsigned)(wanted < resident ? wanted : resident));
}

template <typename In, typename Out>
cudaError_t forward(const PatchGeometry& g, const void* images, const int* offsets,
                    void* patches, float scale, float fill, cudaStream_t stream) {
  if (row_count(g) == 0 || row_length(g) == 0) return cudaSuccess;
  dim3 block;
  const dim3 grid = grid_for(g, &block);
  extract_patches_kernel<In, Out><<<grid, block, 0, stream>>>(
      static_cast<const In*>(images), offsets, static_cast<Out*>(patches), g.batch,
      g.n_patches, g.n_dims, g.image[0], g.image[1], g.image[2], g.channels,
      g.patch[0], g.patch[1], g.patch[2], scale, fill);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward(const PatchGeometry& g, const void* grad, const int* offsets,
                     void* image_grad, long long image_elements, float scale,
                     cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(image_grad, 0, image_elements * sizeof(T), stream);
  if (err != cudaSuccess || row_count(g) == 0 || row_length(g) == 0) return err;
  dim3 block;
  const dim3 grid = grid_for(g, &block);
  extract_patches_grad_kernel<T><<<grid, block, 0, stream>>>(
      static_cast<const T*>(grad), offsets, static_cast<T*>(image_grad), g.batch,
      g.n_patches, g.n_dims, g.image[0], g.image[1], g.image[2], g.channels,
      g.patch[0], g.patch[1], g.patch[2], scale);
  return cudaGetLastError();
}

const char* message(cudaError_t err) {
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace

const char* LaunchExtractPatches(GpuType in, GpuType out, const PatchGeometry& g,
                                 const void* images, const int* offsets, void* patches,
                                 float scale, float fill, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (in == GpuType::kUint8 && out == GpuType::kFloat)
    return message(forward<unsigned char, float>(g, images, offsets, patches, scale, fill, s));
  if (in == GpuType::kUint16 && out == GpuType::kFloat)
    return message(forward<unsigned short, float>(g, images, offsets, patches, scale, fill, s));
  if (in != out) return "unsupported dtype pair";
  switch (in) {
    case GpuType::kUint8:
      return message(forward<unsigned char, unsigned char>(g, images, offsets, patches, scale, fill, s));
    case GpuType::kUint16:
      return message(forward<unsigned short, unsigned short>(g, images, offsets, patches, scale, fill, s));
    case GpuType::kHalf:
      return message(forward<__half, __half>(g, images, offsets, patches, scale, fill, s));
    case GpuType::kFloat:
      return message(forward<float, float>(g, images, offsets, patches, scale, fill, s));
    case GpuType::kDouble:
      return message(forward<double, double>(g, images, offsets, patches, scale, fill, s));
  }
  return "unsupported dtype";
}

const char* LaunchExtractPatchesGrad(GpuType type, const PatchGeometry& g,
                                     const void* grad, const int* offsets,
                                     void* image_grad, long long image_elements,
                                     float scale, void* stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (type) {
    case GpuType::kHalf:
      return message(backward<__half>(g, grad, offsets, image_grad, image_elements, scale, s));
    case GpuType::kFloat:
      return message(backward<float>(g, grad, offsets, image_grad, image_elements, scale, s));
    case GpuType::kDouble:
      return message(backward<double>(g, grad, offsets, image_grad, image_elements, scale, s));
    default:
      return "the gradient exists for floating dtypes only";
  }
}

}  // namespace ats
