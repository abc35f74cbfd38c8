// What the forward and gradient kernel files share: the device setup, the
// geometry and device code headers, and the TensorFlow names they use.
#ifndef ATS_EXTRACT_PATCHES_KERNEL_BASE_H_
#define ATS_EXTRACT_PATCHES_KERNEL_BASE_H_

#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "extract_patches_geometry.h"
#include "extract_patches_gpu.cu.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/threadpool.h"
#if GOOGLE_CUDA
#include "extract_patches_gpu.h"
#include "extract_patches_gpu_types.h"
#endif

namespace ats {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using CPUDevice = Eigen::ThreadPoolDevice;

}  // namespace ats

#endif  // ATS_EXTRACT_PATCHES_KERNEL_BASE_H_
