// swiglu and swiglu_backward: CPU, Meta and Autograd implementations (CUDA in
// swiglu_cuda.cpp). float32/float64 run the fused loops of kernels/activation; bfloat16
// and float16 on CPU fall back to ATen's vectorised ops (same values, more passes).
#include "switchyard/ops/swiglu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "kernels/activation/swiglu.h"

namespace switchyard::ops {

namespace detail {

void check_swiglu(const char* op, const at::Tensor& gate, const at::Tensor& up,
                  const at::Tensor* grad_h) {
  TORCH_CHECK(at::isFloatingType(gate.scalar_type()), op,
              ": expected gate to be floating point, got ", gate.scalar_type());
  TORCH_CHECK(up.sym_sizes() == gate.sym_sizes(), op, ": expected up to have gate's shape ",
              gate.sym_sizes(), ", got ", up.sym_sizes());
  TORCH_CHECK(up.scalar_type() == gate.scalar_type(), op, ": expected up to have gate's dtype ",
              gate.scalar_type(), ", got ", up.scalar_type());
  TORCH_CHECK(up.device() == gate.device(), op, ": expected up on gate's device ",
              gate.device(), ", got ", up.device());
  if (grad_h != nullptr) {
    TORCH_CHECK(grad_h->sym_sizes() == gate.sym_sizes() &&
                    grad_h->scalar_type() == gate.scalar_type() &&
                    grad_h->device() == gate.device(),
                op, ": expected grad_h like gate (", gate.scalar_type(), " ", gate.sym_sizes(),
                " on ", gate.device(), "), got ", grad_h->scalar_type(), " ",
                grad_h->sym_sizes(), " on ", grad_h->device());
  }
}

}  // namespace detail

namespace {

using Outputs3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

bool fused_on_cpu(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

kernels::ActivationType cpu_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? kernels::ActivationType::kFloat64
                                        : kernels::ActivationType::kFloat32;
}

at::Tensor swiglu_cpu(const at::Tensor& gate_in, const at::Tensor& up_in) {
  detail::check_swiglu("swiglu", gate_in, up_in);
  if (!fused_on_cpu(gate_in)) return at::silu(gate_in).mul_(up_in);
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor h = at::empty_like(gate);
  kernels::swiglu_forward_cpu(cpu_type(gate), gate.data_ptr(), up.data_ptr(), h.data_ptr(),
                              gate.numel(), at::get_num_threads());
  return h;
}

Outputs3 swiglu_backward_cpu(const at::Tensor& grad_h_in, const at::Tensor& gate_in,
                             const at::Tensor& up_in) {
  detail::check_swiglu("swiglu_backward", gate_in, up_in, &grad_h_in);
  if (!fused_on_cpu(gate_in)) {
    const at::Tensor silu = at::silu(gate_in);
    return {silu * up_in, at::silu_backward(grad_h_in * up_in, gate_in), grad_h_in * silu};
  }
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  const at::Tensor grad_h = grad_h_in.contiguous();
  at::Tensor h = at::empty_like(gate), grad_gate = at::empty_like(gate),
             grad_up = at::empty_like(gate);
  kernels::swiglu_backward_cpu(cpu_type(gate), grad_h.data_ptr(), gate.data_ptr(), up.data_ptr(),
                               h.data_ptr(), grad_gate.data_ptr(), grad_up.data_ptr(),
                               gate.numel(), at::get_num_threads());
  return {h, grad_gate, grad_up};
}

at::Tensor swiglu_meta(const at::Tensor& gate, const at::Tensor& up) {
  detail::check_swiglu("swiglu", gate, up);
  return at::empty_like(gate);
}

Outputs3 swiglu_backward_meta(const at::Tensor& grad_h, const at::Tensor& gate,
                              const at::Tensor& up) {
  detail::check_swiglu("swiglu_backward", gate, up, &grad_h);
  return {at::empty_like(gate), at::empty_like(gate), at::empty_like(gate)};
}

class SwigluFunction : public torch::autograd::Function<SwigluFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& gate,
                            const at::Tensor& up) {
    ctx->save_for_backward({gate, up});
    const at::AutoDispatchBelowADInplaceOrView guard;
    return swiglu(gate, up);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [h, grad_gate, grad_up] = swiglu_backward(grads[0], saved[0], saved[1]);
    return {grad_gate, grad_up};
  }
};

at::Tensor swiglu_autograd(const at::Tensor& gate, const at::Tensor& up) {
  return SwigluFunction::apply(gate, up);
}

}  // namespace

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("switchyard::swiglu", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(gate, up);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad_h,
                                                               const at::Tensor& gate,
                                                               const at::Tensor& up) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::swiglu_backward", "")
          .typed<Outputs3(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(grad_h, gate, up);
}

}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CPU, m) {
  m.impl("swiglu", &switchyard::ops::swiglu_cpu);
  m.impl("swiglu_backward", &switchyard::ops::swiglu_backward_cpu);
}

TORCH_LIBRARY_IMPL(switchyard, Meta, m) {
  m.impl("swiglu", &switchyard::ops::swiglu_meta);
  m.impl("swiglu_backward", &switchyard::ops::swiglu_backward_meta);
}

TORCH_LIBRARY_IMPL(switchyard, Autograd, m) {
  m.impl("swiglu", &switchyard::ops::swiglu_autograd);
}
