// CPU loops of the fused SwiGLU (swiglu.h): OpenMP over contiguous element blocks.
#include <cmath>
#include <stdexcept>

#include "kernels/activation/swiglu.h"

namespace switchyard::kernels {

namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelThreshold = 1 << 15;

template <typename T>
void forward(const T* g, const T* u, T* h, int64_t n, int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) h[i] = swiglu_value<T>(g[i], u[i], std::exp(-g[i]));
}

template <typename T>
void backward(const T* grad_h, const T* g, const T* u, T* h, T* grad_g, T* grad_u, int64_t n,
              int num_threads) {
#pragma omp parallel for num_threads(num_threads) schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    T hv, gg, gu;
    swiglu_grads<T>(grad_h[i], g[i], u[i], std::exp(-g[i]), &hv, &gg, &gu);
    if (h != nullptr) h[i] = hv;
    grad_g[i] = gg;
    grad_u[i] = gu;
  }
}

[[noreturn]] void unsupported() {
  throw std::invalid_argument("swiglu CPU kernels take float32 or float64 only");
}

}  // namespace

void swiglu_forward_cpu(ActivationType type, const void* g, const void* u, void* h, int64_t n,
                        int num_threads) {
  switch (type) {
    case ActivationType::kFloat32:
      return forward(static_cast<const float*>(g), static_cast<const float*>(u),
                     static_cast<float*>(h), n, num_threads);
    case ActivationType::kFloat64:
      return forward(static_cast<const double*>(g), static_cast<const double*>(u),
                     static_cast<double*>(h), n, num_threads);
    default:
      unsupported();
  }
}

void swiglu_backward_cpu(ActivationType type, const void* grad_h, const void* g, const void* u,
                         void* h, void* grad_g, void* grad_u, int64_t n, int num_threads) {
  switch (type) {
    case ActivationType::kFloat32:
      return backward(static_cast<const float*>(grad_h), static_cast<const float*>(g),
                      static_cast<const float*>(u), static_cast<float*>(h),
                      static_cast<float*>(grad_g), static_cast<float*>(grad_u), n, num_threads);
    case ActivationType::kFloat64:
      return backward(static_cast<const double*>(grad_h), static_cast<const double*>(g),
                      static_cast<const double*>(u), static_cast<double*>(h),
                      static_cast<double*>(grad_g), static_cast<double*>(grad_u), n, num_threads);
    default:
      unsupported();
  }
}

}  // namespace switchyard::kernels
