// swiglu and swiglu_backward on CUDA: checks and allocation here, the kernels in
// kernels/activation/swiglu_cuda.cu. Nothing here synchronizes with the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/activation/swiglu.h"
#include "switchyard/ops/swiglu.h"

namespace switchyard::ops {
namespace {

kernels::ActivationType cuda_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kernels::ActivationType::kFloat32;
    case at::kDouble: return kernels::ActivationType::kFloat64;
    case at::kBFloat16: return kernels::ActivationType::kBFloat16;
    case at::kHalf: return kernels::ActivationType::kFloat16;
    default: TORCH_CHECK(false, "swiglu: unsupported dtype ", t.scalar_type());
  }
}

at::Tensor swiglu_cuda(const at::Tensor& gate_in, const at::Tensor& up_in) {
  detail::check_swiglu("swiglu", gate_in, up_in);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor h = at::empty_like(gate);
  kernels::swiglu_forward_cuda(cuda_type(gate), gate.data_ptr(), up.data_ptr(), h.data_ptr(),
                               gate.numel(), at::cuda::getCurrentCUDAStream().stream());
  return h;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> swiglu_backward_cuda(const at::Tensor& grad_h_in,
                                                                    const at::Tensor& gate_in,
                                                                    const at::Tensor& up_in) {
  detail::check_swiglu("swiglu_backward", gate_in, up_in, &grad_h_in);
  const c10::cuda::CUDAGuard guard(gate_in.device());
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  const at::Tensor grad_h = grad_h_in.contiguous();
  at::Tensor h = at::empty_like(gate), grad_gate = at::empty_like(gate),
             grad_up = at::empty_like(gate);
  kernels::swiglu_backward_cuda(cuda_type(gate), grad_h.data_ptr(), gate.data_ptr(),
                                up.data_ptr(), h.data_ptr(), grad_gate.data_ptr(),
                                grad_up.data_ptr(), gate.numel(),
                                at::cuda::getCurrentCUDAStream().stream());
  return {h, grad_gate, grad_up};
}

}  // namespace
}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CUDA, m) {
  m.impl("swiglu", &switchyard::ops::swiglu_cuda);
  m.impl("swiglu_backward", &switchyard::ops::swiglu_backward_cuda);
}
