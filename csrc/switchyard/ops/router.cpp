// Router helpers: router_jitter and router_logits, composites of ATen ops registered under
// CompositeImplicitAutograd (every device, differentiable, traceable).
//
//   router_jitter(x, eps)  = x * U(1 - eps, 1 + eps)            (Switch Transformer,
//                            Fedus et al. 2021: multiplicative jitter on the router input)
//   router_logits(x, W, prev, R) = x W^T (+ prev R^T)           (MoE++, Jin et al. 2024:
//                            the gating residual adds the previous layer's logits
//                            through a learned [E, E_prev] map)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

#include "switchyard/ops/balancing.h"

namespace switchyard::ops {

namespace {

at::Tensor router_jitter_impl(const at::Tensor& x, double eps) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "router_jitter: expected x to be floating "
              "point, got ", x.scalar_type());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0 && eps <= 1,
              "router_jitter: expected eps in [0, 1], got ", eps);
  // Like at::dropout with p = 0, no noise means no new tensor: x itself comes back.
  if (eps == 0) return x;
  // The noise comes from torch's default generator of x's device (torch.manual_seed
  // reproduces it); the schema carries the nondeterministic_seeded tag.
  const auto noise = at::empty_like(x).uniform_(1.0 - eps, 1.0 + eps);
  return x * noise;
}

void check_matrix(const at::Tensor& t, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == 2, "router_logits: expected ", name, " to be a 2-D ", shape,
              " tensor, got ", t.dim(), "-D with shape ", t.sym_sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "router_logits: expected ", name,
              " to be floating point, got ", t.scalar_type());
}

at::Tensor router_logits_impl(const at::Tensor& x_Td, const at::Tensor& weight_Ed,
                              const std::optional<at::Tensor>& prev_logits,
                              const std::optional<at::Tensor>& residual_weight) {
  check_matrix(x_Td, "x", "[T, d]");
  check_matrix(weight_Ed, "weight", "[E, d]");
  TORCH_CHECK(weight_Ed.sym_size(1) == x_Td.sym_size(1),
              "router_logits: expected weight to have x's hidden size d = ", x_Td.sym_size(1),
              " columns, got shape ", weight_Ed.sym_sizes());
  TORCH_CHECK(weight_Ed.scalar_type() == x_Td.scalar_type(),
              "router_logits: expected weight to have x's dtype ", x_Td.scalar_type(), ", got ",
              weight_Ed.scalar_type());
  const bool has_prev = prev_logits.has_value() && prev_logits->defined();
  const bool has_res = residual_weight.has_value() && residual_weight->defined();
  TORCH_CHECK(has_prev == has_res,
              "router_logits: expected prev_logits and residual_weight both given or both "
              "None (the gating residual needs both), got prev_logits ",
              has_prev ? "given" : "None", " and residual_weight ", has_res ? "given" : "None");

  auto logits_TE = at::linear(x_Td, weight_Ed);  // x W^T
  if (!has_prev) return logits_TE;

  const auto& prev_TEp = *prev_logits;
  const auto& res_EEp = *residual_weight;
  check_matrix(prev_TEp, "prev_logits", "[T, E_prev]");
  check_matrix(res_EEp, "residual_weight", "[E, E_prev]");
  TORCH_CHECK(prev_TEp.sym_size(0) == x_Td.sym_size(0),
              "router_logits: expected prev_logits to have one row per token of x (T = ",
              x_Td.sym_size(0), "), got shape ", prev_TEp.sym_sizes());
  TORCH_CHECK(res_EEp.sym_size(0) == weight_Ed.sym_size(0) &&
                  res_EEp.sym_size(1) == prev_TEp.sym_size(1),
              "router_logits: expected residual_weight of shape [E, E_prev] = [",
              weight_Ed.sym_size(0), ", ", prev_TEp.sym_size(1), "], got ", res_EEp.sym_sizes());
  TORCH_CHECK(prev_TEp.scalar_type() == x_Td.scalar_type() &&
                  res_EEp.scalar_type() == x_Td.scalar_type(),
              "router_logits: expected prev_logits and residual_weight to have x's dtype ",
              x_Td.scalar_type(), ", got ", prev_TEp.scalar_type(), " and ",
              res_EEp.scalar_type());
  return logits_TE + at::linear(prev_TEp, res_EEp);  // + prev R^T
}

}  // namespace

at::Tensor router_jitter(const at::Tensor& x, double eps) {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("switchyard::router_jitter", "")
                                 .typed<at::Tensor(const at::Tensor&, double)>();
  return handle.call(x, eps);
}

at::Tensor router_logits(const at::Tensor& x_Td, const at::Tensor& weight_Ed,
                         const std::optional<at::Tensor>& prev_logits_TEp,
                         const std::optional<at::Tensor>& residual_weight_EEp) {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::router_logits", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  return handle.call(x_Td, weight_Ed, prev_logits_TEp, residual_weight_EEp);
}

}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CompositeImplicitAutograd, m) {
  m.impl("router_jitter", &switchyard::ops::router_jitter_impl);
  m.impl("router_logits", &switchyard::ops::router_logits_impl);
}
