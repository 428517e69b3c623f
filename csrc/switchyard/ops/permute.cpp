// permute_tokens, unpermute_tokens and unpermute_tokens_backward: argument checks, CPU,
// Meta and Autograd implementations and the C++ API (permute.h); CUDA in
// permute_cuda.cpp, kernels in kernels/permute/. docs/permute.md states the semantics.
//
// Note [Permutation autograd]
// permute_tokens and unpermute_tokens (without weights) are each other's adjoint, so the
// backward of permute_tokens is an unpermute_tokens call (its own autograd makes double
// backward work), and the backward of unpermute_tokens is the fused
// unpermute_tokens_backward operator, which computes grad_rows and grad_weights in one pass
// over the slots. rows are saved only when the weights need a gradient (they are the
// experts' output, often the largest activation of the layer).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "kernels/permute/permute_cpu.h"
#include "switchyard/ops/permute.h"
#include "switchyard/ops/permute_internal.h"

namespace switchyard::ops {

namespace detail {

namespace {

bool is_row_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_row_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(is_row_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", t.scalar_type());
}

void check_same_device(const char* op, const char* name, const at::Tensor& t,
                       const char* ref_name, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ",
              ref_name, " (", ref.device(), "), got one on ", t.device());
}

// token_index and expert_index: 1-D int64 of one length S on `ref`'s device.
void check_index_pair(const char* op, const at::Tensor& token_index,
                      const at::Tensor& expert_index, const char* ref_name,
                      const at::Tensor& ref) {
  using Named = std::pair<const char*, const at::Tensor*>;
  for (const auto& [name, t] :
       {Named{"token_index", &token_index}, Named{"expert_index", &expert_index}}) {
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == at::kLong, op, ": ", name,
                " must be a 1-D int64 tensor [num_slots], got a ", t->scalar_type(),
                " tensor of shape ", t->sym_sizes());
    check_same_device(op, name, *t, ref_name, ref);
  }
  TORCH_CHECK(expert_index.sym_size(0) == token_index.sym_size(0), op,
              ": token_index and expert_index must have the same length (num_slots), got "
              "shapes ",
              token_index.sym_sizes(), " and ", expert_index.sym_sizes());
}

void check_weights(const char* op, const std::optional<at::Tensor>& weights,
                   const at::Tensor& token_index, const at::Tensor& rows) {
  if (!weights.has_value() || !weights->defined()) return;
  const at::Tensor& w = *weights;
  TORCH_CHECK(w.dim() == 1 && w.sym_size(0) == token_index.sym_size(0) &&
                  at::isFloatingType(w.scalar_type()),
              op, ": weights must be a 1-D floating tensor [num_slots] = [",
              token_index.sym_size(0), "], got a ", w.scalar_type(), " tensor of shape ",
              w.sym_sizes());
  check_same_device(op, "weights", w, "rows", rows);
}

// rows [S,d] with S the length of token_index.
void check_rows(const char* op, const at::Tensor& rows, const at::Tensor& token_index) {
  TORCH_CHECK(rows.dim() == 2 && rows.sym_size(0) == token_index.sym_size(0), op,
              ": rows must be a 2-D tensor [num_slots, hidden] with num_slots = ",
              token_index.sym_size(0), " (the length of token_index), got shape ",
              rows.sym_sizes());
  check_row_dtype(op, "rows", rows);
}

kernels::PermuteParams params_for(const at::Tensor& rows_like, int64_t num_tokens,
                                  int64_t num_slots, int64_t hidden) {
  kernels::PermuteParams p;
  p.num_tokens = num_tokens;
  p.num_slots = num_slots;
  p.hidden = hidden;
  p.type = row_type(rows_like);
  return p;
}

}  // namespace

kernels::RowType row_type(const at::Tensor& rows) {
  switch (rows.scalar_type()) {
    case at::kFloat: return kernels::RowType::kFloat32;
    case at::kDouble: return kernels::RowType::kFloat64;
    case at::kBFloat16: return kernels::RowType::kBFloat16;
    case at::kHalf: return kernels::RowType::kFloat16;
    default: TORCH_INTERNAL_ASSERT(false, "unchecked row dtype ", rows.scalar_type());
  }
}

at::ScalarType row_acc_dtype(const at::Tensor& rows) {
  return rows.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_permute_tokens(const at::Tensor& x, const at::Tensor& token_index,
                          const at::Tensor& expert_index) {
  TORCH_CHECK(x.dim() == 2,
              "permute_tokens: x must be a 2-D tensor [num_tokens, hidden], got shape ",
              x.sym_sizes());
  check_row_dtype("permute_tokens", "x", x);
  check_index_pair("permute_tokens", token_index, expert_index, "x", x);
}

void check_unpermute_tokens(const at::Tensor& rows, const at::Tensor& token_index,
                            const at::Tensor& expert_index,
                            const std::optional<at::Tensor>& weights,
                            const c10::SymInt& num_tokens) {
  const char* op = "unpermute_tokens";
  check_index_pair(op, token_index, expert_index, "rows", rows);
  check_rows(op, rows, token_index);
  check_weights(op, weights, token_index, rows);
  TORCH_CHECK(num_tokens >= 0, op, ": num_tokens must be >= 0, got ", num_tokens);
}

void check_unpermute_tokens_backward(const at::Tensor& grad_y, const at::Tensor& rows,
                                     const at::Tensor& token_index,
                                     const at::Tensor& expert_index,
                                     const std::optional<at::Tensor>& weights,
                                     bool weights_grad) {
  const char* op = "unpermute_tokens_backward";
  check_index_pair(op, token_index, expert_index, "rows", rows);
  check_rows(op, rows, token_index);
  check_weights(op, weights, token_index, rows);
  TORCH_CHECK(grad_y.dim() == 2 && grad_y.sym_size(1) == rows.sym_size(1), op,
              ": grad_y must be a 2-D tensor [num_tokens, hidden] with hidden = ",
              rows.sym_size(1), " (the columns of rows), got shape ", grad_y.sym_sizes());
  check_row_dtype(op, "grad_y", grad_y);
  check_same_device(op, "grad_y", grad_y, "rows", rows);
  TORCH_CHECK(!weights_grad || (weights.has_value() && weights->defined()), op,
              ": weights_grad=True needs weights, got None");
}

at::Tensor not_requested(const at::TensorOptions& options) { return at::empty({0}, options); }

PermuteCall prepare_permute_tokens(const at::Tensor& x, const at::Tensor& token_index,
                                   const at::Tensor& expert_index) {
  check_permute_tokens(x, token_index, expert_index);
  PermuteCall call;
  call.x = x.contiguous();
  call.token_index = token_index.contiguous();
  call.expert_index = expert_index.contiguous();
  const int64_t S = call.token_index.size(0), d = call.x.size(1);
  call.rows = at::empty({S, d}, call.x.options());
  call.params = params_for(call.x, call.x.size(0), S, d);
  return call;
}

UnpermuteCall prepare_unpermute_tokens(const at::Tensor& rows, const at::Tensor& token_index,
                                       const at::Tensor& expert_index,
                                       const std::optional<at::Tensor>& weights,
                                       int64_t num_tokens) {
  check_unpermute_tokens(rows, token_index, expert_index, weights, num_tokens);
  UnpermuteCall call;
  call.rows = rows.contiguous();
  call.token_index = token_index.contiguous();
  call.expert_index = expert_index.contiguous();
  if (weights.has_value() && weights->defined()) {
    call.weights = weights->to(row_acc_dtype(rows)).contiguous();
  }
  const int64_t S = call.token_index.size(0), d = call.rows.size(1);
  call.y = at::empty({num_tokens, d}, call.rows.options());
  call.params = params_for(call.rows, num_tokens, S, d);
  return call;
}

UnpermuteBackwardCall prepare_unpermute_tokens_backward(
    const at::Tensor& grad_y, const at::Tensor& rows, const at::Tensor& token_index,
    const at::Tensor& expert_index, const std::optional<at::Tensor>& weights, bool rows_grad,
    bool weights_grad) {
  check_unpermute_tokens_backward(grad_y, rows, token_index, expert_index, weights,
                                  weights_grad);
  UnpermuteBackwardCall call;
  call.grad_y = grad_y.to(rows.scalar_type()).contiguous();
  // rows are read only for grad_weights; otherwise they may be a placeholder (an expanded
  // scalar) that must not be materialized
  call.rows = weights_grad ? rows.contiguous() : rows;
  call.token_index = token_index.contiguous();
  call.expert_index = expert_index.contiguous();
  const bool has_weights = weights.has_value() && weights->defined();
  if (has_weights) {
    call.weights_dtype = weights->scalar_type();
    call.weights = weights->to(row_acc_dtype(rows)).contiguous();
  }
  const int64_t S = call.token_index.size(0), d = rows.size(1);
  if (rows_grad) call.grad_rows = at::empty({S, d}, call.grad_y.options());
  if (weights_grad) {
    call.grad_weights = at::empty({S}, call.grad_y.options().dtype(row_acc_dtype(rows)));
  }
  call.params = params_for(rows, call.grad_y.size(0), S, d);
  return call;
}

std::tuple<at::Tensor, at::Tensor> UnpermuteBackwardCall::results() const {
  at::Tensor gr = grad_rows.defined() ? grad_rows : not_requested(grad_y.options());
  at::Tensor gw = grad_weights.defined() ? grad_weights.to(weights_dtype)
                                         : not_requested(grad_y.options().dtype(weights_dtype));
  return {gr, gw};
}

void throw_bad_token(const char* op, const at::Tensor& token_index,
                     const at::Tensor& expert_index, int64_t slot, int64_t num_tokens) {
  TORCH_CHECK(false, op, ": token_index[", slot, "] = ", token_index.data_ptr<int64_t>()[slot],
              " is outside [0, num_tokens) with num_tokens = ", num_tokens, " (the slot is "
              "valid: expert_index[", slot, "] = ", expert_index.data_ptr<int64_t>()[slot], ")");
}

}  // namespace detail

namespace {

// ---- CPU -----------------------------------------------------------------------------------

at::Tensor permute_tokens_cpu(const at::Tensor& x, const at::Tensor& token_index,
                              const at::Tensor& expert_index) {
  detail::PermuteCall call = detail::prepare_permute_tokens(x, token_index, expert_index);
  call.params.num_threads = at::get_num_threads();
  const int64_t bad = kernels::permute_tokens_cpu(
      call.x.data_ptr(), call.token_index.data_ptr<int64_t>(),
      call.expert_index.data_ptr<int64_t>(), call.params, call.rows.data_ptr());
  if (bad >= 0) {
    detail::throw_bad_token("permute_tokens", call.token_index, call.expert_index, bad,
                            call.params.num_tokens);
  }
  return call.rows;
}

at::Tensor unpermute_tokens_cpu(const at::Tensor& rows, const at::Tensor& token_index,
                                const at::Tensor& expert_index,
                                const std::optional<at::Tensor>& weights,
                                c10::SymInt num_tokens) {
  detail::UnpermuteCall call = detail::prepare_unpermute_tokens(
      rows, token_index, expert_index, weights, num_tokens.guard_int(__FILE__, __LINE__));
  call.params.num_threads = at::get_num_threads();
  const int64_t bad = kernels::unpermute_tokens_cpu(
      call.rows.data_ptr(), call.token_index.data_ptr<int64_t>(),
      call.expert_index.data_ptr<int64_t>(), call.weights_ptr(), call.params, call.y.data_ptr());
  if (bad >= 0) {
    detail::throw_bad_token("unpermute_tokens", call.token_index, call.expert_index, bad,
                            call.params.num_tokens);
  }
  return call.y;
}

std::tuple<at::Tensor, at::Tensor> unpermute_tokens_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& rows, const at::Tensor& token_index,
    const at::Tensor& expert_index, const std::optional<at::Tensor>& weights, bool rows_grad,
    bool weights_grad) {
  detail::UnpermuteBackwardCall call = detail::prepare_unpermute_tokens_backward(
      grad_y, rows, token_index, expert_index, weights, rows_grad, weights_grad);
  call.params.num_threads = at::get_num_threads();
  const int64_t bad = kernels::unpermute_tokens_backward_cpu(
      call.grad_y.data_ptr(), weights_grad ? call.rows.data_ptr() : nullptr,
      call.token_index.data_ptr<int64_t>(), call.expert_index.data_ptr<int64_t>(),
      call.weights_ptr(), call.params, call.grad_rows_ptr(), call.grad_weights_ptr());
  if (bad >= 0) {
    detail::throw_bad_token("unpermute_tokens_backward", call.token_index, call.expert_index,
                            bad, call.params.num_tokens);
  }
  return call.results();
}

// ---- Meta ----------------------------------------------------------------------------------

at::Tensor permute_tokens_meta(const at::Tensor& x, const at::Tensor& token_index,
                               const at::Tensor& expert_index) {
  detail::check_permute_tokens(x, token_index, expert_index);
  return at::empty_symint({token_index.sym_size(0), x.sym_size(1)}, x.options());
}

at::Tensor unpermute_tokens_meta(const at::Tensor& rows, const at::Tensor& token_index,
                                 const at::Tensor& expert_index,
                                 const std::optional<at::Tensor>& weights,
                                 c10::SymInt num_tokens) {
  detail::check_unpermute_tokens(rows, token_index, expert_index, weights, num_tokens);
  return at::empty_symint({num_tokens, rows.sym_size(1)}, rows.options());
}

std::tuple<at::Tensor, at::Tensor> unpermute_tokens_backward_meta(
    const at::Tensor& grad_y, const at::Tensor& rows, const at::Tensor& token_index,
    const at::Tensor& expert_index, const std::optional<at::Tensor>& weights, bool rows_grad,
    bool weights_grad) {
  detail::check_unpermute_tokens_backward(grad_y, rows, token_index, expert_index, weights,
                                          weights_grad);
  const auto weights_options =
      rows.options().dtype(weights.has_value() && weights->defined() ? weights->scalar_type()
                                                                     : at::kFloat);
  at::Tensor gr = rows_grad ? at::empty_symint(rows.sym_sizes(), rows.options())
                            : detail::not_requested(rows.options());
  at::Tensor gw = weights_grad ? at::empty_symint({token_index.sym_size(0)}, weights_options)
                               : detail::not_requested(weights_options);
  return {gr, gw};
}

// ---- calls through the dispatcher ----------------------------------------------------------

at::Tensor call_permute_tokens(const at::Tensor& x, const at::Tensor& token_index,
                               const at::Tensor& expert_index) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("switchyard::permute_tokens", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&)>();
  return op.call(x, token_index, expert_index);
}

at::Tensor call_unpermute_tokens(const at::Tensor& rows, const at::Tensor& token_index,
                                 const at::Tensor& expert_index,
                                 const std::optional<at::Tensor>& weights,
                                 c10::SymInt num_tokens) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::unpermute_tokens", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, c10::SymInt)>();
  return op.call(rows, token_index, expert_index, weights, std::move(num_tokens));
}

std::tuple<at::Tensor, at::Tensor> call_unpermute_tokens_backward(
    const at::Tensor& grad_y, const at::Tensor& rows, const at::Tensor& token_index,
    const at::Tensor& expert_index, const std::optional<at::Tensor>& weights, bool rows_grad,
    bool weights_grad) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::unpermute_tokens_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const std::optional<at::Tensor>&, bool, bool)>();
  return op.call(grad_y, rows, token_index, expert_index, weights, rows_grad, weights_grad);
}

// ---- autograd (Note [Permutation autograd]) -----------------------------------------------

class PermuteTokensFunction : public torch::autograd::Function<PermuteTokensFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& token_index, const at::Tensor& expert_index) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor rows = call_permute_tokens(x, token_index, expert_index);
    ctx->save_for_backward({token_index, expert_index});
    ctx->saved_data["num_tokens"] = x.sym_size(0);
    return rows;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!ctx->needs_input_grad(0)) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    at::Tensor grad_x = call_unpermute_tokens(grads[0], saved[0], saved[1], std::nullopt,
                                              ctx->saved_data["num_tokens"].toSymInt());
    return {grad_x, at::Tensor(), at::Tensor()};
  }
};

class UnpermuteTokensFunction : public torch::autograd::Function<UnpermuteTokensFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& rows,
                            const at::Tensor& token_index, const at::Tensor& expert_index,
                            const std::optional<at::Tensor>& weights, c10::SymInt num_tokens) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call_unpermute_tokens(rows, token_index, expert_index, weights, num_tokens);
    const bool has_weights = weights.has_value() && weights->defined();
    const bool keep_rows = has_weights && weights->requires_grad();
    ctx->save_for_backward({keep_rows ? rows : at::Tensor(), token_index, expert_index,
                            has_weights ? *weights : at::Tensor()});
    ctx->saved_data["has_weights"] = has_weights;
    ctx->saved_data["hidden"] = rows.sym_size(1);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const bool has_weights = ctx->saved_data["has_weights"].toBool();
    const auto saved = ctx->get_saved_variables();
    const bool rows_grad = ctx->needs_input_grad(0);
    // the weights are the 4th variable input only when given (and rows were kept then)
    const bool weights_grad = has_weights && ctx->needs_input_grad(3) && saved[0].defined();
    torch::autograd::variable_list result(5);
    if (!rows_grad && !weights_grad) return result;
    at::Tensor rows = saved[0];
    if (!rows.defined()) {
      // shape and dtype only: the backward does not read rows without weights_grad
      rows = at::zeros({}, grads[0].options())
                 .expand_symint({saved[1].sym_size(0), ctx->saved_data["hidden"].toSymInt()});
    }
    const std::optional<at::Tensor> weights =
        has_weights ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
    auto [grad_rows, grad_weights] = call_unpermute_tokens_backward(
        grads[0], rows, saved[1], saved[2], weights, rows_grad, weights_grad);
    if (rows_grad) result[0] = grad_rows;
    if (weights_grad) result[3] = grad_weights;
    return result;
  }
};

at::Tensor permute_tokens_autograd(const at::Tensor& x, const at::Tensor& token_index,
                                   const at::Tensor& expert_index) {
  return PermuteTokensFunction::apply(x, token_index, expert_index);
}

at::Tensor unpermute_tokens_autograd(const at::Tensor& rows, const at::Tensor& token_index,
                                     const at::Tensor& expert_index,
                                     const std::optional<at::Tensor>& weights,
                                     c10::SymInt num_tokens) {
  return UnpermuteTokensFunction::apply(rows, token_index, expert_index, weights,
                                        std::move(num_tokens));
}

}  // namespace

// ---- C++ API -------------------------------------------------------------------------------

at::Tensor permute_tokens(const at::Tensor& x_Td, const at::Tensor& token_index_S,
                          const at::Tensor& expert_index_S) {
  return call_permute_tokens(x_Td, token_index_S, expert_index_S);
}

at::Tensor unpermute_tokens(const at::Tensor& rows_Sd, const at::Tensor& token_index_S,
                            const at::Tensor& expert_index_S,
                            const std::optional<at::Tensor>& weights_S, int64_t num_tokens) {
  return call_unpermute_tokens(rows_Sd, token_index_S, expert_index_S, weights_S,
                               c10::SymInt(num_tokens));
}

TORCH_LIBRARY_IMPL(switchyard, CPU, m) {
  m.impl("permute_tokens", &permute_tokens_cpu);
  m.impl("unpermute_tokens", &unpermute_tokens_cpu);
  m.impl("unpermute_tokens_backward", &unpermute_tokens_backward_cpu);
}

TORCH_LIBRARY_IMPL(switchyard, Meta, m) {
  m.impl("permute_tokens", &permute_tokens_meta);
  m.impl("unpermute_tokens", &unpermute_tokens_meta);
  m.impl("unpermute_tokens_backward", &unpermute_tokens_backward_meta);
}

TORCH_LIBRARY_IMPL(switchyard, Autograd, m) {
  m.impl("permute_tokens", &permute_tokens_autograd);
  m.impl("unpermute_tokens", &unpermute_tokens_autograd);
}

}  // namespace switchyard::ops
