#include "switchyard/nn/moe_layer.h"
#include "switchyard/nn/topk_routing_options.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/options/linear.h>
#include <torch/utils.h>

#include <ostream>

#include "switchyard/ops/balancing.h"
#include "switchyard/ops/permute.h"
#include "switchyard/ops/routing.h"

namespace switchyard::nn {

ops::RouteTopkOptions topk_routing_options(const MoELayerOptions& o, const at::Tensor& selection_bias) {
  ops::RouteTopkOptions ro;
  ro.score_func = o.score_func;
  ro.renormalize = o.renormalize;
  ro.scaling_factor = o.scaling_factor;
  if (selection_bias.defined()) ro.selection_bias = selection_bias;
  ro.num_groups = o.num_groups;
  ro.topk_groups = o.topk_groups;
  ro.group_score = o.group_score;
  ro.num_routed_experts = o.num_experts;
  ro.capacity_factor = o.capacity_factor;
  ro.drop_policy = o.drop_policy;
  return ro;
}

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
  // Only training forwards that will be backpropagated count as routing statistics.
  const bool observe = routing_observer_ && is_training() && at::GradMode::is_enabled();

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
    const ops::Routing r = ops::route_topk(logits, o.top_k, topk_routing_options(o, router->selection_bias));
    if (observe) {
      const torch::NoGradGuard no_grad;
      routing_observer_(r.topk_experts, ops::kept_slot_mask(r));
    }

    if (ep_) {
      y = ep_->run_routed(x_Td, r, *experts);
    } else {
      const at::Tensor rows = ops::permute_tokens(x_Td, r.token_index, r.expert_index);
      const at::Tensor expert_rows = experts(rows, r.expert_counts);
      y = ops::unpermute_tokens(expert_rows, r.token_index, r.expert_index, r.slot_weights, T);
    }
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
    // Under expert parallelism each rank's experts choose among that rank's tokens (the
    // capacity applies per rank's batch, like top-k capacity); the choices then travel
    // through the dispatcher in top-k form.
    const ops::ExpertChoiceRouting r =
        ops::route_expert_choice(logits, o.capacity_factor, o.top_k, o.score_func);
    if (observe) {
      const torch::NoGradGuard no_grad;
      const ops::Routing as_topk = ops::expert_choice_as_routing(r, T);
      routing_observer_(as_topk.topk_experts, ops::kept_slot_mask(as_topk));
    }
    if (ep_) {
      y = ep_->run_routed(x_Td, ops::expert_choice_as_routing(r, T), *experts);
    } else {
      const at::Tensor rows = ops::permute_tokens(x_Td, r.token_index, r.expert_index);
      const at::Tensor expert_rows = experts(rows, r.expert_counts);
      y = ops::unpermute_tokens(expert_rows, r.token_index, r.expert_index, r.weights, T);
    }
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

at::Tensor MoELayerImpl::top_experts(const at::Tensor& router_logits) {
  TORCH_CHECK_VALUE(options_.router == "topk", "MoELayer.top_experts: the layer routes with '", options_.router,
                    "'; only the top-k router makes a per-token choice");
  ops::RouteTopkOptions ro = topk_routing_options(options_, router->selection_bias);
  ro.capacity_factor = 0;  // every choice: capacity drops are not what is being predicted
  return ops::route_topk(router_logits, options_.top_k, ro).topk_experts;
}

bool MoELayerImpl::wants_route_prediction() const {
  return ep_ && options_.router == "topk" && ep_->wants_route_prediction();
}

void MoELayerImpl::prepare_routes(const at::Tensor& x_guess,
                                  const std::optional<at::Tensor>& prev_router_logits) {
  TORCH_CHECK_VALUE(wants_route_prediction(), "MoELayer.prepare_routes: the layer does not take route "
                    "predictions (it needs the top-k router and an expert parallelism with speculative routing)");
  const torch::NoGradGuard no_grad;
  const at::Tensor x_Td = check_input(x_guess, prev_router_logits);
  ep_->prepare_routes(top_experts(router(x_Td, prev_router_logits)));
}

void MoELayerImpl::enable_expert_parallel(std::shared_ptr<ExpertParallelism> ep) {
  const MoELayerOptions& o = options_;
  TORCH_CHECK_VALUE(ep != nullptr, "MoELayer.enable_expert_parallel: expected an ExpertParallelism, got null");
  TORCH_CHECK_VALUE(!ep_, "MoELayer.enable_expert_parallel: expert parallelism is already enabled");
  TORCH_CHECK_VALUE(ep->num_experts() == o.num_experts, "MoELayer.enable_expert_parallel: the "
                    "placement has ", ep->num_experts(), " experts but the layer num_experts = ",
                    o.num_experts);
  const std::vector<int64_t> ids = ep->local_experts();
  TORCH_CHECK_VALUE(!ids.empty(), "MoELayer.enable_expert_parallel: this rank holds no expert");
  for (size_t i = 0; i < ids.size(); ++i) {
    TORCH_CHECK_VALUE(ids[i] >= 0 && ids[i] < o.num_experts && (i == 0 || ids[i] > ids[i - 1]),
                      "MoELayer.enable_expert_parallel: local expert ids must be ascending in [0, ",
                      o.num_experts, "), got ", c10::IntArrayRef(ids));
  }
  GroupedExperts local(static_cast<int64_t>(ids.size()), o.d_model, o.ffn_hidden, o.activation,
                       o.init_std);
  local->to(experts->up_proj.device(), experts->up_proj.scalar_type());
  const at::Tensor index = at::tensor(ids, at::kLong).to(experts->up_proj.device());
  {
    const torch::NoGradGuard no_grad;
    if (experts->gate_proj.defined()) local->gate_proj.copy_(experts->gate_proj.index_select(0, index));
    local->up_proj.copy_(experts->up_proj.index_select(0, index));
    local->down_proj.copy_(experts->down_proj.index_select(0, index));
  }
  experts = replace_module("experts", local);
  ep_ = std::move(ep);
}

std::vector<int64_t> MoELayerImpl::local_expert_ids() const {
  if (ep_) return ep_->local_experts();
  std::vector<int64_t> all(options_.num_experts);
  for (int64_t e = 0; e < options_.num_experts; ++e) all[e] = e;
  return all;
}

void MoELayerImpl::load_global_expert_weights(const at::Tensor& gate_proj, const at::Tensor& up_proj,
                                              const at::Tensor& down_proj) {
  const at::Tensor index = at::tensor(local_expert_ids(), at::kLong).to(experts->up_proj.device());
  const torch::NoGradGuard no_grad;
  auto load = [&](at::Tensor& param, const at::Tensor& full, const char* name) {
    const int64_t E = options_.num_experts;
    TORCH_CHECK_VALUE(full.defined() && full.dim() == 3 && full.size(0) == E &&
                          full.size(1) == param.size(1) && full.size(2) == param.size(2),
                      "MoELayer.load_global_expert_weights: expected ", name, " of shape [", E,
                      ", ", param.size(1), ", ", param.size(2), "] (all experts), got ",
                      full.defined() ? full.sizes() : c10::IntArrayRef{});
    param.copy_(full.to(param.device()).index_select(0, index));
  };
  if (experts->gate_proj.defined()) load(experts->gate_proj, gate_proj, "gate_proj");
  load(experts->up_proj, up_proj, "up_proj");
  load(experts->down_proj, down_proj, "down_proj");
}

void MoELayerImpl::update_selection_bias() {
  if (options_.bias_update_rate <= 0 || !pending_load_.defined()) return;
  update_selection_bias(pending_load_);
}

void MoELayerImpl::update_selection_bias(const at::Tensor& total_load) {
  if (options_.bias_update_rate <= 0) return;
  const int64_t E = options_.num_experts;
  TORCH_CHECK_VALUE(total_load.dim() == 1 && total_load.size(0) >= E,
                    "MoELayer.update_selection_bias: expected a load of shape [",
                    options_.num_router_outputs(), "], got ", total_load.sizes());
  // Balance the routed experts among themselves: null and zero-computation experts are
  // not experts that can be overloaded.
  at::Tensor bias = router->selection_bias.narrow(0, 0, E);
  ops::update_expert_bias_(bias, total_load.narrow(0, 0, E).to(bias.device()),
                           options_.bias_update_rate);
  pending_load_ = at::Tensor();
}

at::Tensor MoELayerImpl::pending_load() const {
  if (pending_load_.defined()) return pending_load_;
  return at::zeros({options_.num_router_outputs()},
                   router->weight.options().dtype(at::kLong));
}

void MoELayerImpl::pretty_print(std::ostream& stream) const {
  stream << "switchyard::nn::MoELayer(" << options_.to_string() << ")";
}

}  // namespace switchyard::nn
