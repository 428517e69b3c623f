// route_topk and route_topk_backward on CUDA: argument checks and allocation here, the
// kernels in kernels/routing/topk_router_cuda.cu. Nothing here synchronizes with the host.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "kernels/routing/routing_cuda.h"
#include "switchyard/ops/routing_internal.h"

namespace switchyard::ops {
namespace {

using detail::RouteTopkOutputs;

at::Tensor workspace(const at::Tensor& like, size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

RouteTopkOutputs route_topk_cuda(const at::Tensor& logits_in, int64_t k,
                                 c10::string_view score_func, bool renormalize,
                                 double scaling_factor,
                                 const std::optional<at::Tensor>& selection_bias,
                                 int64_t num_groups, int64_t topk_groups,
                                 c10::string_view group_score, int64_t num_routed_experts,
                                 double capacity_factor, c10::string_view drop_policy) {
  const detail::TopkSettings s = detail::check_route_topk(
      logits_in, k, score_func, renormalize, scaling_factor, selection_bias, num_groups,
      topk_groups, group_score, num_routed_experts, capacity_factor, drop_policy);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const int64_t T = logits_in.size(0);
  TORCH_CHECK(T * k <= std::numeric_limits<int32_t>::max(),
              "route_topk: num_tokens * k must be below 2^31 on CUDA, got ", T, " * ", k);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor bias = detail::prepare_bias(s, logits, selection_bias);
  RouteTopkOutputs outputs = detail::allocate_route_topk(logits, s);
  const auto params = detail::topk_params(s, T, 1);
  const auto type = detail::logits_type(logits);
  const size_t bytes = kernels::topk_router_cuda_workspace_bytes(type, params);
  const at::Tensor ws = workspace(logits, bytes);
  kernels::topk_router_cuda(logits.data_ptr(), type, bias.defined() ? bias.data_ptr() : nullptr,
                            params, detail::topk_output_pointers(outputs), ws.data_ptr(), bytes,
                            at::cuda::getCurrentCUDAStream());
  return outputs;
}

at::Tensor route_topk_backward_cuda(const at::Tensor& grad_topk_weights,
                                    const at::Tensor& grad_slot_weights, const at::Tensor& logits,
                                    const at::Tensor& topk_experts, const at::Tensor& slot_index,
                                    const at::Tensor& expert_counts, int64_t k,
                                    c10::string_view score_func, bool renormalize,
                                    double scaling_factor) {
  const c10::cuda::CUDAGuard guard(logits.device());
  detail::TopkBackwardCall call = detail::prepare_route_topk_backward(
      grad_topk_weights, grad_slot_weights, logits, topk_experts, slot_index, expert_counts, k,
      score_func, renormalize, scaling_factor);
  const auto type = detail::logits_type(call.logits);
  const size_t bytes = kernels::topk_router_backward_cuda_workspace_bytes(type, call.params);
  const at::Tensor ws = workspace(call.logits, bytes);
  kernels::topk_router_backward_cuda(call.logits.data_ptr(), type, call.inputs, call.params,
                                     call.grad.data_ptr(), ws.data_ptr(), bytes,
                                     at::cuda::getCurrentCUDAStream());
  return call.grad.to(logits.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(switchyard, CUDA, m) {
  m.impl("route_topk", &route_topk_cuda);
  m.impl("route_topk_backward", &route_topk_backward_cuda);
}

}  // namespace switchyard::ops
