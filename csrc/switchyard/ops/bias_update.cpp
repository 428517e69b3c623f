// update_expert_bias_: the auxiliary-loss-free balancing step of DeepSeek-V3 (Wang et al.
// 2024, "Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts"):
//
//   b_e += update_rate * sign(mean_e'(load_e') - load_e)
//
// An overloaded expert (load above the mean) has its selection bias lowered, an
// underloaded one raised; an expert exactly at the mean keeps its bias (sign(0) = 0). The
// bias only steers top-k selection (route_topk's selection_bias); it never enters the
// combine weights and is not trained by gradients.
//
// Registered under CompositeExplicitAutograd: one ATen implementation for every backend
// (Meta included, so it traces under torch.compile), and deliberately no autograd formula.
// The mutation of bias is declared in the schema (Tensor(a!)).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

#include "switchyard/ops/balancing.h"

namespace switchyard::ops {

namespace {

void update_expert_bias_impl(at::Tensor& bias_E, const at::Tensor& expert_load_E,
                             double update_rate) {
  constexpr const char* op = "update_expert_bias_";
  TORCH_CHECK(bias_E.dim() == 1, op, ": expected bias to be a 1-D [E] tensor, got ",
              bias_E.dim(), "-D with shape ", bias_E.sym_sizes());
  TORCH_CHECK(at::isFloatingType(bias_E.scalar_type()), op,
              ": expected bias to be floating point, got ", bias_E.scalar_type());
  TORCH_CHECK(expert_load_E.dim() == 1, op,
              ": expected expert_load to be a 1-D [E] tensor, got ", expert_load_E.dim(),
              "-D with shape ", expert_load_E.sym_sizes());
  TORCH_CHECK(expert_load_E.sym_size(0) == bias_E.sym_size(0), op,
              ": expected expert_load to have one entry per expert of bias (E = ",
              bias_E.sym_size(0), "), got ", expert_load_E.sym_size(0));
  const auto load_type = expert_load_E.scalar_type();
  TORCH_CHECK((at::isIntegralType(load_type, /*includeBool=*/false) ||
               at::isFloatingType(load_type)),
              op, ": expected expert_load to be an integer or floating tensor, got ", load_type);
  TORCH_CHECK(expert_load_E.device() == bias_E.device(), op,
              ": expected expert_load on the device of bias (", bias_E.device(), "), got ",
              expert_load_E.device());
  TORCH_CHECK(std::isfinite(update_rate) && update_rate >= 0, op,
              ": expected update_rate to be finite and >= 0, got ", update_rate);
  if (bias_E.sym_numel() == 0) return;

  // The comparison with the mean runs in float64: integer loads are exact there, so an
  // expert whose load equals the mean gets sign(0) = 0 and keeps its bias.
  const auto load = expert_load_E.to(at::kDouble);
  const auto direction = at::sign(load.mean() - load);
  bias_E.add_(direction.to(bias_E.scalar_type()), update_rate);
}

}  // namespace

void update_expert_bias_(at::Tensor& bias_E, const at::Tensor& expert_load_E,
                         double update_rate) {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("switchyard::update_expert_bias_", "")
                                 .typed<void(at::Tensor&, const at::Tensor&, double)>();
  handle.call(bias_E, expert_load_E, update_rate);
}

}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CompositeExplicitAutograd, m) {
  m.impl("update_expert_bias_", &switchyard::ops::update_expert_bias_impl);
}
