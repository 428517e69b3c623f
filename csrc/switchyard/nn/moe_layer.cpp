#include "switchyard/nn/moe_layer.h"

#include <ATen/ATen.h>
#include <torch/nn/options/linear.h>
#include <torch/utils.h>

#include <ostream>

#include "switchyard/ops/balancing.h"
#include "switchyard/ops/permute.h"
#include "switchyard/ops/routing.h"

namespace switchyard::nn {

MoELayerImpl::MoELayerImpl(MoELayerOptions options) : options_(std::move(options)) {
  options_.validate();
  const MoELayerOptions& o = options_;
  router = register_module(
      "router", Router(o.d_model, o.num_router_outputs(), o.gating_residual,
                       o.has_selection_bias(), o.init_std));
  experts = register_module(
      "experts", GroupedExperts(o.num_experts, o.d_model, o.ffn_hidden, o.activation, o.init_std));
  if (o.num_shared_experts > 0) {
    shared_experts =
        register_module("shared_experts", MLP(o.d_model, o.resolved_shared_ffn_hidden(), o.init_std));
    if (o.shared_expert_gate) {
      shared_expert_gate = register_module(
          "shared_expert_gate",
          torch::nn::Linear(torch::nn::LinearOptions(o.d_model, 1).bias(false)));
      const torch::NoGradGuard no_grad;
      shared_expert_gate->weight.normal_(0.0, o.init_std);
    }
  }
  if (o.num_constant_experts > 0) {
    zero_compute =
        register_module("zero_compute", ConstantExperts(o.num_constant_experts, o.d_model, o.init_std));
  }
}

void MoELayerImpl::reset_parameters() {
  router->reset_parameters();
  experts->reset_parameters();
  if (shared_experts) shared_experts->reset_parameters();
  if (shared_expert_gate) {
    const torch::NoGradGuard no_grad;
    shared_expert_gate->weight.normal_(0.0, options_.init_std);
  }
  if (zero_compute) zero_compute->reset_parameters();
  pending_load_ = at::Tensor();
}

at::Tensor MoELayerImpl::check_input(const at::Tensor& x,
                                     const std::optional<at::Tensor>& prev_router_logits) const {
  const int64_t d = options_.d_model;
  TORCH_CHECK(x.dim() >= 2 && x.size(-1) == d, "MoELayer: expected x of shape [..., ", d,
              "] (at least 2-D, the last dimension the hidden size d_model = ", d, "), got ",
              x.sizes());
  const at::Tensor& w = router->weight;
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "MoELayer: expected x to have the layer's "
              "dtype ", w.scalar_type(), " (router.weight), got ", x.scalar_type(),
              "; convert the layer with .to(dtype) or the input");
  TORCH_CHECK(x.device() == w.device(), "MoELayer: expected x on the layer's device ",
              w.device(), " (router.weight), got ", x.device());
  const at::Tensor x_Td = x.reshape({-1, d});
  if (prev_router_logits.has_value() && prev_router_logits->defined()) {
    const at::Tensor& prev = *prev_router_logits;
    TORCH_CHECK(options_.gating_residual, "MoELayer: prev_router_logits was given but this "
                "layer has no gating residual (gating_residual = false)");
    TORCH_CHECK(prev.dim() == 2 && prev.size(0) == x_Td.size(0) &&
                    prev.size(1) == options_.num_router_outputs(),
                "MoELayer: expected prev_router_logits of shape [", x_Td.size(0), ", ",
                options_.num_router_outputs(), "] (tokens of x, router outputs), got ",
                prev.sizes());
  }
  return x_Td;
}

MoEOutput MoELayerImpl::forward(const at::Tensor& x,
                                const std::optional<at::Tensor>& prev_router_logits) {
  const MoELayerOptions& o = options_;
  const at::Tensor x_Td = check_input(x, prev_router_logits);
  const int64_t T = x_Td.size(0);

  const bool jitter = is_training() && o.jitter_eps > 0;
  const at::Tensor router_in = jitter ? ops::router_jitter(x_Td, o.jitter_eps) : x_Td;
  MoEOutput out;
  out.router_logits = router(router_in, prev_router_logits);
  const at::Tensor& logits = out.router_logits;
  const auto loss_options = logits.options().dtype(
      logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const at::Tensor zero = at::zeros({}, loss_options);
  out.load_balancing_loss = out.z_loss = out.seq_aux_loss = zero;
  if (o.z_loss_coeff > 0) out.z_loss = ops::z_loss(logits);

  at::Tensor y;
  if (o.router == "topk") {
    ops::RouteTopkOptions ro;
    ro.score_func = o.score_func;
    ro.renormalize = o.renormalize;
    ro.scaling_factor = o.scaling_factor;
    if (router->selection_bias.defined()) ro.selection_bias = router->selection_bias;
    ro.num_groups = o.num_groups;
    ro.topk_groups = o.topk_groups;
    ro.group_score = o.group_score;
    ro.num_routed_experts = o.num_experts;
    ro.capacity_factor = o.capacity_factor;
    ro.drop_policy = o.drop_policy;
    const ops::Routing r = ops::route_topk(logits, o.top_k, ro);

    const at::Tensor rows = ops::permute_tokens(x_Td, r.token_index, r.expert_index);
    const at::Tensor expert_rows = experts(rows, r.expert_counts);
    y = ops::unpermute_tokens(expert_rows, r.token_index, r.expert_index, r.slot_weights, T);
    if (o.num_zero_experts + o.num_copy_experts + o.num_constant_experts > 0) {
      const at::Tensor v = zero_compute ? zero_compute->const_vectors : x_Td.new_empty({0, o.d_model});
      const at::Tensor g =
          zero_compute ? zero_compute->const_gate_weight : x_Td.new_empty({0, 2, o.d_model});
      y = y + ops::zero_compute_experts(x_Td, r.topk_weights, r.topk_experts,
                                        o.first_zero_compute_expert(), o.num_zero_experts,
                                        o.num_copy_experts, v, g);
    }

    if (o.aux_loss_coeff > 0) {
      out.load_balancing_loss =
          ops::switch_aux_loss(logits, r.topk_experts, o.score_func, o.num_null_experts);
    }
    if (o.seq_aux_loss_coeff > 0) {
      const int64_t seq_len = x.dim() == 3 ? x.size(1) : T;
      out.seq_aux_loss = ops::sequence_aux_loss(logits, r.topk_experts, seq_len, o.score_func);
    }
    out.expert_counts = r.expert_counts;
    out.expert_load = r.expert_load;
    out.num_dropped = r.num_dropped;
    out.real_experts_per_token = r.real_experts_per_token();
    if (is_training() && o.bias_update_rate > 0) {
      const torch::NoGradGuard no_grad;
      pending_load_ = pending_load_.defined() ? pending_load_ + r.expert_load : r.expert_load.clone();
    }
  } else {
    const ops::ExpertChoiceRouting r =
        ops::route_expert_choice(logits, o.capacity_factor, o.top_k, o.score_func);
    const at::Tensor rows = ops::permute_tokens(x_Td, r.token_index, r.expert_index);
    const at::Tensor expert_rows = experts(rows, r.expert_counts);
    y = ops::unpermute_tokens(expert_rows, r.token_index, r.expert_index, r.weights, T);
    out.expert_counts = r.expert_counts;
    out.expert_load = r.expert_counts;
    out.num_dropped = r.num_unrouted_tokens;
    out.real_experts_per_token =
        r.expert_counts.sum().to(at::kDouble).div(static_cast<double>(std::max<int64_t>(T, 1)));
  }

  if (shared_experts) {
    at::Tensor shared = shared_experts(x_Td);
    if (shared_expert_gate) shared = shared * at::sigmoid(shared_expert_gate(x_Td));
    y = y + shared;
  }
  out.output = y.view(x.sizes());
  out.aux_loss = out.load_balancing_loss * o.aux_loss_coeff + out.z_loss * o.z_loss_coeff +
                 out.seq_aux_loss * o.seq_aux_loss_coeff;
  return out;
}

void MoELayerImpl::update_selection_bias() {
  if (options_.bias_update_rate <= 0 || !pending_load_.defined()) return;
  const int64_t E = options_.num_experts;
  // Balance the routed experts among themselves: null and zero-computation experts are
  // not experts that can be overloaded.
  at::Tensor bias = router->selection_bias.narrow(0, 0, E);
  ops::update_expert_bias_(bias, pending_load_.narrow(0, 0, E), options_.bias_update_rate);
  pending_load_ = at::Tensor();
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "switchyard::nn::MoELayer(" << options_.to_string() << ")";
}

}  // namespace switchyard::nn
