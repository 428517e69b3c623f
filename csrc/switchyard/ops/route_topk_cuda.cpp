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
                                    const at::Tensor& grad_slot_weights,
                                    const at::Tensor& logits_in, const at::Tensor& topk_experts,
                                    const at::Tensor& slot_index,
                                    const at::Tensor& expert_counts, int64_t k,
                                    c10::string_view score_func, bool renormalize,
                                    double scaling_factor) {
  const int64_t Er = detail::check_route_topk_backward(grad_topk_weights, grad_slot_weights,
                                                       logits_in, topk_experts, slot_index,
                                                       expert_counts, k);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const auto acc = detail::weight_dtype(logits);
  const at::Tensor g_topk = grad_topk_weights.to(acc).contiguous();
  const at::Tensor g_slot = grad_slot_weights.to(acc).contiguous();
  const at::Tensor experts = topk_experts.contiguous();
  const at::Tensor slots = slot_index.contiguous();
  const at::Tensor counts = expert_counts.contiguous();
  at::Tensor grad = at::empty(logits.sizes(), logits.options().dtype(acc));

  kernels::TopkBackwardParams p;
  p.num_tokens = logits.size(0);
  p.num_experts = logits.size(1);
  p.k = k;
  p.num_routed_experts = Er;
  p.score_func = detail::parse_score_func("route_topk_backward", score_func);
  p.renormalize = renormalize;
  p.scaling_factor = scaling_factor;
  kernels::TopkBackwardInputs in;
  in.grad_topk_weights = g_topk.data_ptr();
  in.grad_slot_weights = g_slot.data_ptr();
  in.topk_experts = experts.data_ptr<int64_t>();
  in.slot_index = slots.data_ptr<int64_t>();
  in.expert_counts = counts.data_ptr<int64_t>();
  const auto type = detail::logits_type(logits);
  const size_t bytes = kernels::topk_router_backward_cuda_workspace_bytes(type, p);
  const at::Tensor ws = workspace(logits, bytes);
  kernels::topk_router_backward_cuda(logits.data_ptr(), type, in, p, grad.data_ptr(),
                                     ws.data_ptr(), bytes, at::cuda::getCurrentCUDAStream());
  return grad.to(logits.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(switchyard, CUDA, m) {
  m.impl("route_topk", &route_topk_cuda);
  m.impl("route_topk_backward", &route_topk_backward_cuda);
}

}  // namespace switchyard::ops
