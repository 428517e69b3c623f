// CUDA kernels of the fused SwiGLU (swiglu.h): a grid-stride loop, one element per thread
// step, arithmetic in float (double for float64).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/activation/swiglu.h"
#include "kernels/routing/cuda_utils.cuh"

namespace switchyard::kernels {

namespace {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type load(T v) {
  return static_cast<typename Acc<T>::type>(v);
}
template <> __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float load(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T store(typename Acc<T>::type v) {
  return static_cast<T>(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half store(float v) { return __float2half(v); }

__device__ __forceinline__ float exp_neg(float g) { return __expf(-g); }
__device__ __forceinline__ double exp_neg(double g) { return exp(-g); }

template <typename T>
__global__ void forward_kernel(const T* g, const T* u, T* h, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const auto gv = load(g[i]);
    h[i] = store<T>(swiglu_value(gv, load(u[i]), exp_neg(gv)));
  }
}

template <typename T>
__global__ void backward_kernel(const T* grad_h, const T* g, const T* u, T* h, T* grad_g,
                                T* grad_u, int64_t n) {
  using A = typename Acc<T>::type;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const A gv = load(g[i]);
    A hv, gg, gu;
    swiglu_grads(load(grad_h[i]), gv, load(u[i]), exp_neg(gv), &hv, &gg, &gu);
    if (h != nullptr) h[i] = store<T>(hv);
    grad_g[i] = store<T>(gg);
    grad_u[i] = store<T>(gu);
  }
}

unsigned grid_for(int64_t n) {
  constexpr int64_t kMaxBlocks = 65535;
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

template <typename F>
void dispatch(ActivationType type, F&& f) {
  switch (type) {
    case ActivationType::kFloat32: return f(float{});
    case ActivationType::kFloat64: return f(double{});
    case ActivationType::kBFloat16: return f(__nv_bfloat16{});
    case ActivationType::kFloat16: return f(__half{});
  }
}

}  // namespace

void swiglu_forward_cuda(ActivationType type, const void* g, const void* u, void* h, int64_t n,
                         void* stream) {
  if (n == 0) return;
  dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    forward_kernel<T><<<grid_for(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(g), static_cast<const T*>(u), static_cast<T*>(h), n);
  });
  SWITCHYARD_CUDA_CHECK(cudaGetLastError());
}

void swiglu_backward_cuda(ActivationType type, const void* grad_h, const void* g, const void* u,
                          void* h, void* grad_g, void* grad_u, int64_t n, void* stream) {
  if (n == 0) return;
  dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    backward_kernel<T><<<grid_for(n), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad_h), static_cast<const T*>(g), static_cast<const T*>(u),
        static_cast<T*>(h), static_cast<T*>(grad_g), static_cast<T*>(grad_u), n);
  });
  SWITCHYARD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace switchyard::kernels
