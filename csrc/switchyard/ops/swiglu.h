// C++ API of the fused SwiGLU activation: swiglu(g, u) = silu(g) * u, differentiable, and
// its fused backward (which also recomputes the activation). See kernels/activation/swiglu.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace switchyard::ops {

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);

// (h, grad_gate, grad_up) for the upstream gradient grad_h.
std::tuple<at::Tensor, at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad_h,
                                                               const at::Tensor& gate,
                                                               const at::Tensor& up);

namespace detail {
void check_swiglu(const char* op, const at::Tensor& gate, const at::Tensor& up,
                  const at::Tensor* grad_h = nullptr);
}  // namespace detail

}  // namespace switchyard::ops
