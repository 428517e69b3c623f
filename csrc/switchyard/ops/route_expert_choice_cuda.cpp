// route_expert_choice and route_expert_choice_backward on CUDA: argument checks and
// allocation here, the kernels in kernels/routing/expert_choice_cuda.cu. Nothing here
// synchronizes with the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "kernels/routing/routing_cuda.h"
#include "switchyard/ops/routing_internal.h"

namespace switchyard::ops {
namespace {

using detail::RouteExpertChoiceOutputs;

RouteExpertChoiceOutputs route_expert_choice_cuda(const at::Tensor& logits_in,
                                                  double capacity_factor, int64_t k,
                                                  c10::string_view score_func) {
  const auto s = detail::check_route_expert_choice(logits_in, capacity_factor, k, score_func);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const int64_t T = logits_in.size(0);
  TORCH_CHECK(T * s.num_experts <= std::numeric_limits<int32_t>::max(),
              "route_expert_choice: num_tokens * num_experts must be below 2^31 on CUDA, got ",
              T, " * ", s.num_experts);
  const at::Tensor logits = logits_in.contiguous();
  RouteExpertChoiceOutputs outputs = detail::allocate_route_expert_choice(logits, s, T);
  kernels::ExpertChoiceParams p;
  p.num_tokens = T;
  p.num_experts = s.num_experts;
  p.capacity = detail::expert_choice_capacity(s, T);
  p.score_func = s.score_func;
  const auto type = detail::logits_type(logits);
  const size_t bytes = kernels::expert_choice_cuda_workspace_bytes(type, p);
  const at::Tensor ws =
      at::empty({static_cast<int64_t>(bytes)}, logits.options().dtype(at::kByte));
  kernels::expert_choice_cuda(logits.data_ptr(), type, p,
                              detail::expert_choice_output_pointers(outputs), ws.data_ptr(),
                              bytes, at::cuda::getCurrentCUDAStream());
  return outputs;
}

at::Tensor route_expert_choice_backward_cuda(const at::Tensor& grad_weights,
                                             const at::Tensor& logits,
                                             const at::Tensor& token_index,
                                             const at::Tensor& expert_index,
                                             c10::string_view score_func) {
  const c10::cuda::CUDAGuard guard(logits.device());
  detail::ExpertChoiceBackwardCall call = detail::prepare_route_expert_choice_backward(
      grad_weights, logits, token_index, expert_index, score_func);
  kernels::expert_choice_backward_cuda(
      call.logits.data_ptr(), detail::logits_type(call.logits), call.grad_weights.data_ptr(),
      call.token_index.data_ptr<int64_t>(), call.expert_index.data_ptr<int64_t>(), call.params,
      call.grad.data_ptr(), at::cuda::getCurrentCUDAStream());
  return call.grad.to(logits.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(switchyard, CUDA, m) {
  m.impl("route_expert_choice", &route_expert_choice_cuda);
  m.impl("route_expert_choice_backward", &route_expert_choice_backward_cuda);
}

}  // namespace switchyard::ops
