#include "switchyard/dispatch/all_to_all_autograd.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <torch/autograd.h>

namespace switchyard::dispatch {
namespace {

// The group and splits travel to backward in a capsule (saved_data holds IValues only).
struct ExchangeState : torch::CustomClassHolder {
  ExchangeState(comm::Communicator g, std::vector<int64_t> s, std::vector<int64_t> r)
      : group(std::move(g)), send_splits(std::move(s)), recv_splits(std::move(r)) {}
  comm::Communicator group;
  std::vector<int64_t> send_splits, recv_splits;
};

// Forward and backward of an exchange of `inputs` (shared by the one- and two-tensor nodes;
// torch::autograd::Function needs each tensor as its own argument to track it).
torch::autograd::variable_list exchange_forward(torch::autograd::AutogradContext* ctx,
                                                const torch::autograd::variable_list& inputs,
                                                const c10::intrusive_ptr<ExchangeState>& state) {
  torch::autograd::variable_list outputs;
  for (const at::Tensor& x : inputs) {
    outputs.push_back(state->group.all_to_all_v(x.contiguous(), state->send_splits, state->recv_splits));
  }
  ctx->saved_data["state"] = c10::IValue::make_capsule(state);
  // Shape, dtype and device of each output, to build a zero gradient when one is undefined.
  for (size_t i = 0; i < outputs.size(); ++i) {
    const std::string n = std::to_string(i);
    ctx->saved_data["shape" + n] = c10::IValue(outputs[i].sizes().vec());
    ctx->saved_data["dtype" + n] = c10::IValue(outputs[i].scalar_type());
    ctx->saved_data["device" + n] = c10::IValue(outputs[i].device());
  }
  return outputs;
}

torch::autograd::variable_list exchange_backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grads) {
  auto state = c10::static_intrusive_pointer_cast<ExchangeState>(ctx->saved_data["state"].toCapsule());
  torch::autograd::variable_list result;
  for (size_t i = 0; i < grads.size(); ++i) {
    at::Tensor g = grads[i];
    if (!g.defined()) {
      // Every rank must still take part in the exchange.
      const std::string n = std::to_string(i);
      g = at::zeros(ctx->saved_data["shape" + n].toIntVector(),
                    at::TensorOptions()
                        .dtype(ctx->saved_data["dtype" + n].toScalarType())
                        .device(ctx->saved_data["device" + n].toDevice()));
    }
    result.push_back(state->group.all_to_all_v(g.contiguous(), state->recv_splits, state->send_splits));
  }
  result.emplace_back();  // the state argument
  return result;
}

class AllToAllV1 : public torch::autograd::Function<AllToAllV1> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a,
                                                c10::intrusive_ptr<ExchangeState> state) {
    return exchange_forward(ctx, {a}, state);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return exchange_backward(ctx, grads);
  }
};

class AllToAllV2 : public torch::autograd::Function<AllToAllV2> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a,
                                                const at::Tensor& b,
                                                c10::intrusive_ptr<ExchangeState> state) {
    return exchange_forward(ctx, {a, b}, state);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return exchange_backward(ctx, grads);
  }
};

}  // namespace

std::vector<at::Tensor> all_to_all_v_autograd(comm::Communicator group,
                                              const std::vector<at::Tensor>& inputs,
                                              const std::vector<int64_t>& send_splits,
                                              const std::vector<int64_t>& recv_splits) {
  auto state = c10::make_intrusive<ExchangeState>(std::move(group), send_splits, recv_splits);
  if (inputs.size() == 1) return AllToAllV1::apply(inputs[0], state);
  TORCH_CHECK(inputs.size() == 2, "all_to_all_v_autograd: expected 1 or 2 tensors, got ", inputs.size());
  return AllToAllV2::apply(inputs[0], inputs[1], state);
}

}  // namespace switchyard::dispatch
