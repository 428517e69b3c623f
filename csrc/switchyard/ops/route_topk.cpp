// route_topk and route_topk_backward: CPU, Meta and Autograd implementations (the CUDA
// ones are in route_topk_cuda.cpp). docs/routing.md states the semantics; the per-row
// arithmetic is in kernels/routing/routing_math.h.
//
// Note [Fixed output sizes]
// Every output has a size known from the inputs' shapes alone (the grouped arrays hold all
// S = T*K slots, kept routed slots first, the rest in a tail marked by expert_index -1), so
// the Meta kernel needs no data, fake tensors and CUDA graphs work, and nothing syncs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "kernels/routing/routing_cpu.h"
#include "switchyard/ops/routing_internal.h"

namespace switchyard::ops {

namespace detail {

namespace {

kernels::GroupScore parse_group_score(c10::string_view v) {
  if (v == "max") return kernels::GroupScore::kMax;
  if (v == "top2_sum") return kernels::GroupScore::kTop2Sum;
  if (v == "balanced") return kernels::GroupScore::kBalanced;
  TORCH_CHECK(false, "route_topk: group_score must be one of 'max', 'top2_sum', 'balanced', got '",
              v, "'");
}

kernels::DropPolicy parse_drop_policy(c10::string_view v) {
  if (v == "position") return kernels::DropPolicy::kPosition;
  if (v == "score") return kernels::DropPolicy::kScore;
  TORCH_CHECK(false, "route_topk: drop_policy must be one of 'position', 'score', got '", v, "'");
}

}  // namespace

TopkSettings check_route_topk(const at::Tensor& logits, int64_t k, c10::string_view score_func,
                              bool renormalize, double scaling_factor,
                              const std::optional<at::Tensor>& selection_bias,
                              int64_t num_groups, int64_t topk_groups,
                              c10::string_view group_score, int64_t num_routed_experts,
                              double capacity_factor, c10::string_view drop_policy) {
  TopkSettings s;
  const int64_t E = check_logits("route_topk", logits);
  s.num_experts = E;
  TORCH_CHECK(k >= 1 && k <= E, "route_topk: k must be in [1, num_experts=", E, "], got ", k);
  s.k = k;
  s.score_func = parse_score_func("route_topk", score_func);
  s.renormalize = renormalize;
  TORCH_CHECK(std::isfinite(scaling_factor), "route_topk: scaling_factor must be finite, got ",
              scaling_factor);
  s.scaling_factor = scaling_factor;

  if (selection_bias.has_value() && selection_bias->defined()) {
    const at::Tensor& b = *selection_bias;
    TORCH_CHECK(b.dim() == 1 && b.sym_size(0) == E && at::isFloatingType(b.scalar_type()),
                "route_topk: selection_bias must be a 1-D floating tensor of length num_experts=",
                E, ", got a ", b.dim(), "-D ", b.scalar_type(), " tensor of shape ",
                b.sym_sizes());
    TORCH_CHECK(b.device() == logits.device(),
                "route_topk: selection_bias must be on the same device as logits (",
                logits.device(), "), got ", b.device());
    s.has_bias = true;
  }

  TORCH_CHECK(num_routed_experts == -1 || (num_routed_experts >= 1 && num_routed_experts <= E),
              "route_topk: num_routed_experts must be in [1, num_experts=", E,
              "] or -1 (all), got ", num_routed_experts);
  const int64_t Er = num_routed_experts == -1 ? E : num_routed_experts;
  s.num_routed_experts = Er;

  TORCH_CHECK(num_groups >= 1, "route_topk: num_groups must be >= 1, got ", num_groups);
  TORCH_CHECK(Er % num_groups == 0, "route_topk: the ", Er,
              " routed experts (num_routed_experts) must split evenly into num_groups=",
              num_groups, " groups");
  TORCH_CHECK(topk_groups >= 0 && topk_groups <= num_groups,
              "route_topk: topk_groups must be in [0, num_groups=", num_groups,
              "] (0 = all groups), got ", topk_groups);
  s.num_groups = num_groups;
  s.topk_groups = topk_groups == 0 ? num_groups : topk_groups;
  s.group_score = parse_group_score(group_score);
  const int64_t group_size = Er / num_groups;
  if (s.group_score == kernels::GroupScore::kBalanced) {
    TORCH_CHECK(k % num_groups == 0,
                "route_topk: group_score='balanced' needs k divisible by num_groups=", num_groups,
                ", got k=", k);
    TORCH_CHECK(Er == E,
                "route_topk: group_score='balanced' does not support local experts "
                "(num_routed_experts=", Er, " < num_experts=", E, ")");
  } else if (num_groups > 1 && s.topk_groups < num_groups) {
    TORCH_CHECK(s.group_score != kernels::GroupScore::kTop2Sum || group_size >= 2,
                "route_topk: group_score='top2_sum' needs at least 2 experts per group, got ",
                group_size);
    const int64_t candidates = s.topk_groups * group_size + (E - Er);
    TORCH_CHECK(candidates >= k, "route_topk: group-limited routing keeps ", candidates,
                " experts (topk_groups=", s.topk_groups, " of num_groups=", num_groups,
                " groups of ", group_size, " routed experts, plus ", E - Er,
                " local experts), fewer than k=", k);
  }

  TORCH_CHECK(capacity_factor >= 0 && std::isfinite(capacity_factor),
              "route_topk: capacity_factor must be >= 0 (0 = unlimited), got ", capacity_factor);
  s.capacity_factor = capacity_factor;
  s.drop_policy = parse_drop_policy(drop_policy);
  return s;
}

RouteTopkOutputs allocate_route_topk(const at::Tensor& logits, const TopkSettings& s) {
  const c10::SymInt T = logits.sym_size(0);
  const c10::SymInt S = T * s.k;
  const auto ids = logits.options().dtype(at::kLong);
  const auto weights = logits.options().dtype(weight_dtype(logits));
  return {at::empty_symint({T, s.k}, weights),             // topk_weights
          at::empty_symint({T, s.k}, ids),                 // topk_experts
          at::empty_symint({S}, ids),                      // token_index
          at::empty_symint({S}, ids),                      // expert_index
          at::empty_symint({S}, ids),                      // slot_index
          at::empty_symint({S}, weights),                  // slot_weights
          at::empty({s.num_routed_experts}, ids),          // expert_counts
          at::empty({s.num_experts}, ids),                 // expert_load
          at::empty({}, ids)};                             // num_dropped
}

int64_t topk_capacity(const TopkSettings& s, int64_t num_tokens) {
  if (s.capacity_factor == 0) return -1;
  // evaluated left to right in double, as docs/routing.md states (and the tests reproduce)
  const double c = s.capacity_factor * static_cast<double>(num_tokens) *
                   static_cast<double>(s.k) / static_cast<double>(s.num_routed_experts);
  return static_cast<int64_t>(std::ceil(c));
}

kernels::TopkRouterParams topk_params(const TopkSettings& s, int64_t num_tokens,
                                      int num_threads) {
  kernels::TopkRouterParams p;
  p.num_tokens = num_tokens;
  p.num_experts = s.num_experts;
  p.k = s.k;
  p.score_func = s.score_func;
  p.renormalize = s.renormalize;
  p.scaling_factor = s.scaling_factor;
  p.has_bias = s.has_bias;
  p.num_groups = s.num_groups;
  p.topk_groups = s.topk_groups;
  p.group_score = s.group_score;
  p.num_routed_experts = s.num_routed_experts;
  p.capacity = topk_capacity(s, num_tokens);
  p.drop_policy = s.drop_policy;
  p.num_threads = num_threads;
  return p;
}

kernels::TopkRouterOutputs topk_output_pointers(RouteTopkOutputs& o) {
  kernels::TopkRouterOutputs out;
  out.topk_weights = std::get<0>(o).data_ptr();
  out.topk_experts = std::get<1>(o).data_ptr<int64_t>();
  out.token_index = std::get<2>(o).data_ptr<int64_t>();
  out.expert_index = std::get<3>(o).data_ptr<int64_t>();
  out.slot_index = std::get<4>(o).data_ptr<int64_t>();
  out.slot_weights = std::get<5>(o).data_ptr();
  out.expert_counts = std::get<6>(o).data_ptr<int64_t>();
  out.expert_load = std::get<7>(o).data_ptr<int64_t>();
  out.num_dropped = std::get<8>(o).data_ptr<int64_t>();
  return out;
}

at::Tensor prepare_bias(const TopkSettings& s, const at::Tensor& logits,
                        const std::optional<at::Tensor>& selection_bias) {
  if (!s.has_bias) return at::Tensor();
  return selection_bias->to(weight_dtype(logits)).contiguous();
}

int64_t check_route_topk_backward(const at::Tensor& grad_topk_weights,
                                  const at::Tensor& grad_slot_weights, const at::Tensor& logits,
                                  const at::Tensor& topk_experts, const at::Tensor& slot_index,
                                  const at::Tensor& expert_counts, int64_t k) {
  check_logits("route_topk_backward", logits);
  const auto T = logits.sym_size(0);
  TORCH_CHECK(topk_experts.dim() == 2 && topk_experts.sym_size(0) == T &&
                  topk_experts.sym_size(1) == k && topk_experts.scalar_type() == at::kLong,
              "route_topk_backward: topk_experts must be int64 [num_tokens, k=", k, "], got ",
              topk_experts.scalar_type(), " ", topk_experts.sym_sizes());
  TORCH_CHECK(grad_topk_weights.dim() == 2 && grad_topk_weights.sym_size(0) == T &&
                  grad_topk_weights.sym_size(1) == k,
              "route_topk_backward: grad_topk_weights must be [num_tokens, k=", k, "], got ",
              grad_topk_weights.sym_sizes());
  TORCH_CHECK(grad_slot_weights.dim() == 1 && grad_slot_weights.sym_size(0) == T * k,
              "route_topk_backward: grad_slot_weights must be [num_tokens * k], got ",
              grad_slot_weights.sym_sizes());
  TORCH_CHECK(slot_index.dim() == 1 && slot_index.sym_size(0) == T * k &&
                  slot_index.scalar_type() == at::kLong,
              "route_topk_backward: slot_index must be int64 [num_tokens * k], got ",
              slot_index.scalar_type(), " ", slot_index.sym_sizes());
  TORCH_CHECK(expert_counts.dim() == 1 && expert_counts.scalar_type() == at::kLong &&
                  expert_counts.sym_size(0) >= 1 && expert_counts.sym_size(0) <= logits.sym_size(1),
              "route_topk_backward: expert_counts must be int64 [num_routed_experts], got ",
              expert_counts.scalar_type(), " ", expert_counts.sym_sizes());
  for (const at::Tensor* t : {&grad_topk_weights, &grad_slot_weights, &topk_experts,
                              &slot_index, &expert_counts}) {
    TORCH_CHECK(t->device() == logits.device(),
                "route_topk_backward: every tensor must be on the logits' device (",
                logits.device(), "), got one on ", t->device());
  }
  return expert_counts.sym_size(0).guard_int(__FILE__, __LINE__);
}

// Calls the operator through the dispatcher (below autograd when the caller set the guard).
RouteTopkOutputs call_route_topk(const at::Tensor& logits, int64_t k, c10::string_view score_func,
                                 bool renormalize, double scaling_factor,
                                 const std::optional<at::Tensor>& selection_bias,
                                 int64_t num_groups, int64_t topk_groups,
                                 c10::string_view group_score, int64_t num_routed_experts,
                                 double capacity_factor, c10::string_view drop_policy) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::route_topk", "")
          .typed<RouteTopkOutputs(const at::Tensor&, int64_t, c10::string_view, bool, double,
                                  const std::optional<at::Tensor>&, int64_t, int64_t,
                                  c10::string_view, int64_t, double, c10::string_view)>();
  return op.call(logits, k, score_func, renormalize, scaling_factor, selection_bias, num_groups,
                 topk_groups, group_score, num_routed_experts, capacity_factor, drop_policy);
}

TopkBackwardCall prepare_route_topk_backward(
    const at::Tensor& grad_topk_weights, const at::Tensor& grad_slot_weights,
    const at::Tensor& logits, const at::Tensor& topk_experts, const at::Tensor& slot_index,
    const at::Tensor& expert_counts, int64_t k, c10::string_view score_func, bool renormalize,
    double scaling_factor) {
  const int64_t Er = check_route_topk_backward(grad_topk_weights, grad_slot_weights, logits,
                                               topk_experts, slot_index, expert_counts, k);
  TopkBackwardCall call;
  call.logits = logits.contiguous();
  const auto acc = weight_dtype(call.logits);
  call.grad_topk_weights = grad_topk_weights.to(acc).contiguous();
  call.grad_slot_weights = grad_slot_weights.to(acc).contiguous();
  call.topk_experts = topk_experts.contiguous();
  call.slot_index = slot_index.contiguous();
  call.expert_counts = expert_counts.contiguous();
  call.grad = at::empty(call.logits.sizes(), call.logits.options().dtype(acc));

  kernels::TopkBackwardParams& p = call.params;
  p.num_tokens = call.logits.size(0);
  p.num_experts = call.logits.size(1);
  p.k = k;
  p.num_routed_experts = Er;
  p.score_func = parse_score_func("route_topk_backward", score_func);
  p.renormalize = renormalize;
  p.scaling_factor = scaling_factor;
  kernels::TopkBackwardInputs& in = call.inputs;
  in.grad_topk_weights = call.grad_topk_weights.data_ptr();
  in.grad_slot_weights = call.grad_slot_weights.data_ptr();
  in.topk_experts = call.topk_experts.data_ptr<int64_t>();
  in.slot_index = call.slot_index.data_ptr<int64_t>();
  in.expert_counts = call.expert_counts.data_ptr<int64_t>();
  return call;
}

}  // namespace detail

namespace {

using detail::RouteTopkOutputs;

RouteTopkOutputs route_topk_cpu(const at::Tensor& logits_in, int64_t k,
                                c10::string_view score_func, bool renormalize,
                                double scaling_factor,
                                const std::optional<at::Tensor>& selection_bias,
                                int64_t num_groups, int64_t topk_groups,
                                c10::string_view group_score, int64_t num_routed_experts,
                                double capacity_factor, c10::string_view drop_policy) {
  const detail::TopkSettings s = detail::check_route_topk(
      logits_in, k, score_func, renormalize, scaling_factor, selection_bias, num_groups,
      topk_groups, group_score, num_routed_experts, capacity_factor, drop_policy);
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor bias = detail::prepare_bias(s, logits, selection_bias);
  RouteTopkOutputs outputs = detail::allocate_route_topk(logits, s);
  const auto params = detail::topk_params(s, logits.size(0), at::get_num_threads());
  kernels::topk_router_cpu(logits.data_ptr(), detail::logits_type(logits),
                           bias.defined() ? bias.data_ptr() : nullptr, params,
                           detail::topk_output_pointers(outputs));
  return outputs;
}

RouteTopkOutputs route_topk_meta(const at::Tensor& logits, int64_t k,
                                 c10::string_view score_func, bool renormalize,
                                 double scaling_factor,
                                 const std::optional<at::Tensor>& selection_bias,
                                 int64_t num_groups, int64_t topk_groups,
                                 c10::string_view group_score, int64_t num_routed_experts,
                                 double capacity_factor, c10::string_view drop_policy) {
  const detail::TopkSettings s = detail::check_route_topk(
      logits, k, score_func, renormalize, scaling_factor, selection_bias, num_groups,
      topk_groups, group_score, num_routed_experts, capacity_factor, drop_policy);
  return detail::allocate_route_topk(logits, s);
}

at::Tensor route_topk_backward_cpu(const at::Tensor& grad_topk_weights,
                                   const at::Tensor& grad_slot_weights, const at::Tensor& logits,
                                   const at::Tensor& topk_experts, const at::Tensor& slot_index,
                                   const at::Tensor& expert_counts, int64_t k,
                                   c10::string_view score_func, bool renormalize,
                                   double scaling_factor) {
  detail::TopkBackwardCall call = detail::prepare_route_topk_backward(
      grad_topk_weights, grad_slot_weights, logits, topk_experts, slot_index, expert_counts, k,
      score_func, renormalize, scaling_factor);
  call.params.num_threads = at::get_num_threads();
  kernels::topk_router_backward_cpu(call.logits.data_ptr(), detail::logits_type(call.logits),
                                    call.inputs, call.params, call.grad.data_ptr());
  return call.grad.to(logits.scalar_type());
}

at::Tensor route_topk_backward_meta(const at::Tensor& grad_topk_weights,
                                    const at::Tensor& grad_slot_weights, const at::Tensor& logits,
                                    const at::Tensor& topk_experts, const at::Tensor& slot_index,
                                    const at::Tensor& expert_counts, int64_t k,
                                    c10::string_view score_func, bool renormalize,
                                    double scaling_factor) {
  detail::check_route_topk_backward(grad_topk_weights, grad_slot_weights, logits, topk_experts,
                                    slot_index, expert_counts, k);
  detail::parse_score_func("route_topk_backward", score_func);
  return at::empty_symint(logits.sym_sizes(), logits.options());
}

// ---- autograd ------------------------------------------------------------------------------

// topk_weights and slot_weights are differentiable w.r.t. the logits; the selection (and
// so the bias and every integer output) is not. Backward is the route_topk_backward op.
class RouteTopkFunction : public torch::autograd::Function<RouteTopkFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& logits, int64_t k,
      const std::string& score_func, bool renormalize, double scaling_factor,
      const std::optional<at::Tensor>& selection_bias, int64_t num_groups, int64_t topk_groups,
      const std::string& group_score, int64_t num_routed_experts, double capacity_factor,
      const std::string& drop_policy) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [topk_weights, topk_experts, token_index, expert_index, slot_index, slot_weights,
          expert_counts, expert_load, num_dropped] =
        detail::call_route_topk(logits, k, score_func, renormalize, scaling_factor,
                                selection_bias, num_groups, topk_groups, group_score,
                                num_routed_experts, capacity_factor, drop_policy);
    ctx->save_for_backward({logits, topk_experts, slot_index, expert_counts});
    ctx->saved_data["k"] = k;
    ctx->saved_data["score_func"] = score_func;
    ctx->saved_data["renormalize"] = renormalize;
    ctx->saved_data["scaling_factor"] = scaling_factor;
    ctx->mark_non_differentiable(
        {topk_experts, token_index, expert_index, slot_index, expert_counts, expert_load,
         num_dropped});
    return {topk_weights, topk_experts, token_index, expert_index, slot_index,
            slot_weights, expert_counts, expert_load, num_dropped};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("switchyard::route_topk_backward", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                              c10::string_view, bool, double)>();
    const auto saved = ctx->get_saved_variables();
    const std::string score_func = ctx->saved_data["score_func"].toStringRef();
    at::Tensor grad_logits =
        op.call(grads[0], grads[5], saved[0], saved[1], saved[2], saved[3],
                ctx->saved_data["k"].toInt(), score_func,
                ctx->saved_data["renormalize"].toBool(),
                ctx->saved_data["scaling_factor"].toDouble());
    torch::autograd::variable_list result(12);  // one per forward input
    result[0] = grad_logits;
    return result;
  }
};

RouteTopkOutputs route_topk_autograd(const at::Tensor& logits, int64_t k,
                                     c10::string_view score_func, bool renormalize,
                                     double scaling_factor,
                                     const std::optional<at::Tensor>& selection_bias,
                                     int64_t num_groups, int64_t topk_groups,
                                     c10::string_view group_score, int64_t num_routed_experts,
                                     double capacity_factor, c10::string_view drop_policy) {
  const auto out = RouteTopkFunction::apply(
      logits, k, std::string(score_func), renormalize, scaling_factor, selection_bias,
      num_groups, topk_groups, std::string(group_score), num_routed_experts, capacity_factor,
      std::string(drop_policy));
  return {out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7], out[8]};
}

}  // namespace

TORCH_LIBRARY_IMPL(switchyard, CPU, m) {
  m.impl("route_topk", &route_topk_cpu);
  m.impl("route_topk_backward", &route_topk_backward_cpu);
}

TORCH_LIBRARY_IMPL(switchyard, Meta, m) {
  m.impl("route_topk", &route_topk_meta);
  m.impl("route_topk_backward", &route_topk_backward_meta);
}

TORCH_LIBRARY_IMPL(switchyard, Autograd, m) {
  m.impl("route_topk", &route_topk_autograd);
}

}  // namespace switchyard::ops
