// route_expert_choice and route_expert_choice_backward: CPU, Meta and Autograd
// implementations (CUDA in route_expert_choice_cuda.cpp). Expert-choice routing (Zhou et
// al. 2022): each expert takes its C best tokens; docs/routing.md states the semantics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/routing/routing_cpu.h"
#include "switchyard/ops/routing_internal.h"

namespace switchyard::ops {

namespace detail {

ExpertChoiceSettings check_route_expert_choice(const at::Tensor& logits, double capacity_factor,
                                               int64_t k, c10::string_view score_func) {
  ExpertChoiceSettings s;
  s.num_experts = check_logits("route_expert_choice", logits);
  TORCH_CHECK(capacity_factor > 0 && std::isfinite(capacity_factor),
              "route_expert_choice: capacity_factor must be > 0, got ", capacity_factor);
  TORCH_CHECK(k >= 1 && k <= s.num_experts,
              "route_expert_choice: k must be in [1, num_experts=", s.num_experts, "], got ", k);
  s.capacity_factor = capacity_factor;
  s.k = k;
  s.score_func = parse_score_func("route_expert_choice", score_func);
  return s;
}

int64_t expert_choice_capacity(const ExpertChoiceSettings& s, int64_t num_tokens) {
  // evaluated left to right in double, as docs/routing.md states
  const double c = s.capacity_factor * static_cast<double>(num_tokens) *
                   static_cast<double>(s.k) / static_cast<double>(s.num_experts);
  return std::min<int64_t>(num_tokens, static_cast<int64_t>(std::ceil(c)));
}

RouteExpertChoiceOutputs allocate_route_expert_choice(const at::Tensor& logits,
                                                      const ExpertChoiceSettings& s,
                                                      int64_t num_tokens) {
  const int64_t n = s.num_experts * expert_choice_capacity(s, num_tokens);
  const auto ids = logits.options().dtype(at::kLong);
  return {at::empty({n}, logits.options().dtype(weight_dtype(logits))),  // weights
          at::empty({n}, ids),                                           // token_index
          at::empty({n}, ids),                                           // expert_index
          at::empty({s.num_experts}, ids),                               // expert_counts
          at::empty({}, ids)};                                           // num_unrouted_tokens
}

kernels::ExpertChoiceOutputs expert_choice_output_pointers(RouteExpertChoiceOutputs& o) {
  kernels::ExpertChoiceOutputs out;
  out.weights = std::get<0>(o).data_ptr();
  out.token_index = std::get<1>(o).data_ptr<int64_t>();
  out.expert_index = std::get<2>(o).data_ptr<int64_t>();
  out.expert_counts = std::get<3>(o).data_ptr<int64_t>();
  out.num_unrouted = std::get<4>(o).data_ptr<int64_t>();
  return out;
}

void check_route_expert_choice_backward(const at::Tensor& grad_weights, const at::Tensor& logits,
                                        const at::Tensor& token_index,
                                        const at::Tensor& expert_index) {
  const int64_t E = check_logits("route_expert_choice_backward", logits);
  const auto n = token_index.sym_size(0);
  TORCH_CHECK(token_index.dim() == 1 && expert_index.dim() == 1 && grad_weights.dim() == 1 &&
                  expert_index.sym_size(0) == n && grad_weights.sym_size(0) == n &&
                  n % E == 0 && token_index.scalar_type() == at::kLong &&
                  expert_index.scalar_type() == at::kLong,
              "route_expert_choice_backward: expected grad_weights, token_index, expert_index "
              "of one length num_experts * capacity (int64 indices), got ",
              grad_weights.sym_sizes(), ", ", token_index.scalar_type(), " ",
              token_index.sym_sizes(), ", ", expert_index.scalar_type(), " ",
              expert_index.sym_sizes());
  for (const at::Tensor* t : {&grad_weights, &token_index, &expert_index}) {
    TORCH_CHECK(t->device() == logits.device(),
                "route_expert_choice_backward: every tensor must be on the logits' device (",
                logits.device(), "), got one on ", t->device());
  }
}

RouteExpertChoiceOutputs call_route_expert_choice(const at::Tensor& logits,
                                                  double capacity_factor, int64_t k,
                                                  c10::string_view score_func) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("switchyard::route_expert_choice", "")
                             .typed<RouteExpertChoiceOutputs(const at::Tensor&, double, int64_t,
                                                             c10::string_view)>();
  return op.call(logits, capacity_factor, k, score_func);
}

ExpertChoiceBackwardCall prepare_route_expert_choice_backward(const at::Tensor& grad_weights,
                                                              const at::Tensor& logits,
                                                              const at::Tensor& token_index,
                                                              const at::Tensor& expert_index,
                                                              c10::string_view score_func) {
  check_route_expert_choice_backward(grad_weights, logits, token_index, expert_index);
  ExpertChoiceBackwardCall call;
  call.logits = logits.contiguous();
  const auto acc = weight_dtype(call.logits);
  call.grad_weights = grad_weights.to(acc).contiguous();
  call.token_index = token_index.contiguous();
  call.expert_index = expert_index.contiguous();
  call.grad = at::empty(call.logits.sizes(), call.logits.options().dtype(acc));
  kernels::ExpertChoiceParams& p = call.params;
  p.num_tokens = call.logits.size(0);
  p.num_experts = call.logits.size(1);
  p.capacity = call.token_index.size(0) / p.num_experts;
  p.score_func = parse_score_func("route_expert_choice_backward", score_func);
  return call;
}

}  // namespace detail

namespace {

using detail::RouteExpertChoiceOutputs;

RouteExpertChoiceOutputs route_expert_choice_cpu(const at::Tensor& logits_in,
                                                 double capacity_factor, int64_t k,
                                                 c10::string_view score_func) {
  const auto s = detail::check_route_expert_choice(logits_in, capacity_factor, k, score_func);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0);
  RouteExpertChoiceOutputs outputs = detail::allocate_route_expert_choice(logits, s, T);
  kernels::ExpertChoiceParams p;
  p.num_tokens = T;
  p.num_experts = s.num_experts;
  p.capacity = detail::expert_choice_capacity(s, T);
  p.score_func = s.score_func;
  p.num_threads = at::get_num_threads();
  kernels::expert_choice_cpu(logits.data_ptr(), detail::logits_type(logits), p,
                             detail::expert_choice_output_pointers(outputs));
  return outputs;
}

RouteExpertChoiceOutputs route_expert_choice_meta(const at::Tensor& logits,
                                                  double capacity_factor, int64_t k,
                                                  c10::string_view score_func) {
  const auto s = detail::check_route_expert_choice(logits, capacity_factor, k, score_func);
  // the capacity depends on T through a ceil: the number of tokens is specialised
  const int64_t T = logits.sym_size(0).guard_int(__FILE__, __LINE__);
  return detail::allocate_route_expert_choice(logits, s, T);
}

at::Tensor route_expert_choice_backward_cpu(const at::Tensor& grad_weights,
                                            const at::Tensor& logits,
                                            const at::Tensor& token_index,
                                            const at::Tensor& expert_index,
                                            c10::string_view score_func) {
  detail::ExpertChoiceBackwardCall call = detail::prepare_route_expert_choice_backward(
      grad_weights, logits, token_index, expert_index, score_func);
  call.params.num_threads = at::get_num_threads();
  kernels::expert_choice_backward_cpu(
      call.logits.data_ptr(), detail::logits_type(call.logits), call.grad_weights.data_ptr(),
      call.token_index.data_ptr<int64_t>(), call.expert_index.data_ptr<int64_t>(), call.params,
      call.grad.data_ptr());
  return call.grad.to(logits.scalar_type());
}

at::Tensor route_expert_choice_backward_meta(const at::Tensor& grad_weights,
                                             const at::Tensor& logits,
                                             const at::Tensor& token_index,
                                             const at::Tensor& expert_index,
                                             c10::string_view score_func) {
  detail::check_route_expert_choice_backward(grad_weights, logits, token_index, expert_index);
  detail::parse_score_func("route_expert_choice_backward", score_func);
  return at::empty_symint(logits.sym_sizes(), logits.options());
}

// ---- autograd ------------------------------------------------------------------------------

// weights are differentiable w.r.t. the logits; the choice is not.
class RouteExpertChoiceFunction : public torch::autograd::Function<RouteExpertChoiceFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const at::Tensor& logits, double capacity_factor,
                                                int64_t k, const std::string& score_func) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [weights, token_index, expert_index, expert_counts, num_unrouted] =
        detail::call_route_expert_choice(logits, capacity_factor, k, score_func);
    ctx->save_for_backward({logits, token_index, expert_index});
    ctx->saved_data["score_func"] = score_func;
    ctx->mark_non_differentiable({token_index, expert_index, expert_counts, num_unrouted});
    return {weights, token_index, expert_index, expert_counts, num_unrouted};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("switchyard::route_expert_choice_backward", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, c10::string_view)>();
    const auto saved = ctx->get_saved_variables();
    const std::string score_func = ctx->saved_data["score_func"].toStringRef();
    at::Tensor grad_logits = op.call(grads[0], saved[0], saved[1], saved[2], score_func);
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

RouteExpertChoiceOutputs route_expert_choice_autograd(const at::Tensor& logits,
                                                      double capacity_factor, int64_t k,
                                                      c10::string_view score_func) {
  const auto out =
      RouteExpertChoiceFunction::apply(logits, capacity_factor, k, std::string(score_func));
  return {out[0], out[1], out[2], out[3], out[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(switchyard, CPU, m) {
  m.impl("route_expert_choice", &route_expert_choice_cpu);
  m.impl("route_expert_choice_backward", &route_expert_choice_backward_cpu);
}

TORCH_LIBRARY_IMPL(switchyard, Meta, m) {
  m.impl("route_expert_choice", &route_expert_choice_meta);
  m.impl("route_expert_choice_backward", &route_expert_choice_backward_meta);
}

TORCH_LIBRARY_IMPL(switchyard, Autograd, m) {
  m.impl("route_expert_choice", &route_expert_choice_autograd);
}

}  // namespace switchyard::ops
