#include "switchyard/nn/experts.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <ostream>

#include "switchyard/ops/grouped_mm.h"
#include "switchyard/ops/swiglu.h"

namespace switchyard::nn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using ops::grouped_mm;
using ops::grouped_mm_weight_grad;

// One node for the whole SwiGLU expert stack; see Note [Expert activations in backward].
class SwigluExpertsFunction : public torch::autograd::Function<SwigluExpertsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& counts,
                            const at::Tensor& gate_w, const at::Tensor& up_w,
                            const at::Tensor& down_w) {
    const at::Tensor g = grouped_mm(rows, gate_w, counts);
    const at::Tensor u = grouped_mm(rows, up_w, counts);
    ctx->save_for_backward({rows, counts, gate_w, up_w, down_w, g, u});
    return grouped_mm(ops::swiglu(g, u), down_w, counts);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &counts = saved[1], &gate_w = saved[2], &up_w = saved[3],
                     &down_w = saved[4], &g = saved[5], &u = saved[6];
    const at::Tensor grad_y = grads[0].contiguous();

    const at::Tensor grad_h = grouped_mm(grad_y, down_w, counts, /*trans_b=*/true);
    const auto [h, grad_g, grad_u] = ops::swiglu_backward(grad_h, g, u);  // one fused pass
    at::Tensor grad_down;
    if (ctx->needs_input_grad(4)) grad_down = grouped_mm_weight_grad(h, grad_y, counts);

    at::Tensor grad_rows, grad_gate, grad_up;
    if (ctx->needs_input_grad(0)) {
      grad_rows = grouped_mm(grad_g, gate_w, counts, true);
      grad_rows.add_(grouped_mm(grad_u, up_w, counts, true));
    }
    if (ctx->needs_input_grad(2)) grad_gate = grouped_mm_weight_grad(rows, grad_g, counts);
    if (ctx->needs_input_grad(3)) grad_up = grouped_mm_weight_grad(rows, grad_u, counts);
    return {grad_rows, at::Tensor(), grad_gate, grad_up, grad_down};
  }
};

class GeluExpertsFunction : public torch::autograd::Function<GeluExpertsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& rows, const at::Tensor& counts,
                            const at::Tensor& up_w, const at::Tensor& down_w) {
    const at::Tensor u = grouped_mm(rows, up_w, counts);
    ctx->save_for_backward({rows, counts, up_w, down_w, u});
    return grouped_mm(at::gelu(u), down_w, counts);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &rows = saved[0], &counts = saved[1], &up_w = saved[2], &down_w = saved[3],
                     &u = saved[4];
    const at::Tensor grad_y = grads[0].contiguous();
    at::Tensor grad_down;
    if (ctx->needs_input_grad(3)) grad_down = grouped_mm_weight_grad(at::gelu(u), grad_y, counts);
    const at::Tensor grad_u =
        at::gelu_backward(grouped_mm(grad_y, down_w, counts, /*trans_b=*/true), u);
    at::Tensor grad_rows, grad_up;
    if (ctx->needs_input_grad(0)) grad_rows = grouped_mm(grad_u, up_w, counts, true);
    if (ctx->needs_input_grad(2)) grad_up = grouped_mm_weight_grad(rows, grad_u, counts);
    return {grad_rows, at::Tensor(), grad_up, grad_down};
  }
};

}  // namespace

GroupedExpertsImpl::GroupedExpertsImpl(int64_t num_experts, int64_t d_model, int64_t ffn_hidden,
                                       std::string activation, double init_std)
    : num_experts_(num_experts),
      d_model_(d_model),
      ffn_hidden_(ffn_hidden),
      activation_(std::move(activation)),
      init_std_(init_std) {
  TORCH_CHECK_VALUE(activation_ == "swiglu" || activation_ == "gelu",
                    "GroupedExperts: activation must be 'swiglu' or 'gelu', got '", activation_,
                    "'");
  TORCH_CHECK_VALUE(num_experts >= 1 && d_model >= 1 && ffn_hidden >= 1,
                    "GroupedExperts: num_experts, d_model and ffn_hidden must be >= 1, got ",
                    num_experts, ", ", d_model, ", ", ffn_hidden);
  if (activation_ == "swiglu") {
    gate_proj = register_parameter("gate_proj", at::empty({num_experts, d_model, ffn_hidden}));
  }
  up_proj = register_parameter("up_proj", at::empty({num_experts, d_model, ffn_hidden}));
  down_proj = register_parameter("down_proj", at::empty({num_experts, ffn_hidden, d_model}));
  reset_parameters();
}

void GroupedExpertsImpl::reset_parameters() {
  const torch::NoGradGuard no_grad;
  for (auto& p : parameters(/*recurse=*/false)) p.normal_(0.0, init_std_);
}

at::Tensor GroupedExpertsImpl::forward(const at::Tensor& rows_Nd, const at::Tensor& counts_E) {
  TORCH_CHECK(rows_Nd.dim() == 2 && rows_Nd.size(1) == d_model_,
              "GroupedExperts: expected rows of shape [N, ", d_model_, "] (hidden size ",
              d_model_, "), got ", rows_Nd.sizes());
  TORCH_CHECK(counts_E.dim() == 1 && counts_E.size(0) == num_experts_,
              "GroupedExperts: expected counts of shape [", num_experts_,
              "] (one per expert), got ", counts_E.sizes());
  TORCH_CHECK(rows_Nd.scalar_type() == up_proj.scalar_type(),
              "GroupedExperts: expected rows of the experts' dtype ", up_proj.scalar_type(),
              " (up_proj), got ", rows_Nd.scalar_type());
  TORCH_CHECK(rows_Nd.device() == up_proj.device(), "GroupedExperts: expected rows on the "
              "experts' device ", up_proj.device(), " (up_proj), got ", rows_Nd.device());
  if (activation_ == "swiglu") {
    return SwigluExpertsFunction::apply(rows_Nd, counts_E, gate_proj, up_proj, down_proj);
  }
  return GeluExpertsFunction::apply(rows_Nd, counts_E, up_proj, down_proj);
}

void GroupedExpertsImpl::sync_num_experts() {
  const int64_t E = up_proj.size(0);
  TORCH_CHECK_VALUE(down_proj.size(0) == E && (!gate_proj.defined() || gate_proj.size(0) == E),
                    "GroupedExperts.sync_num_experts: up_proj has ", E, " experts but down_proj has ",
                    down_proj.size(0), gate_proj.defined() ? " and gate_proj " : "",
                    gate_proj.defined() ? std::to_string(gate_proj.size(0)) : std::string());
  num_experts_ = E;
}

void GroupedExpertsImpl::pretty_print(std::ostream& stream) const {
  stream << "switchyard::nn::GroupedExperts(num_experts=" << num_experts_ << ", d_model="
         << d_model_ << ", ffn_hidden=" << ffn_hidden_ << ", activation=" << activation_ << ")";
}

}  // namespace switchyard::nn
