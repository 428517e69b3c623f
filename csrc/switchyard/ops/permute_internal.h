// Internal to the token permutation operators (permute.cpp, permute_cuda.cpp): argument
// validation, contiguous inputs, output allocation and kernel parameters shared by the
// CPU, CUDA and Meta implementations. Not part of the C++ API (that is permute.h).
//
// The checks read sizes as SymInts, so the Meta kernels work under torch.compile's dynamic
// shapes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <tuple>

#include "kernels/permute/permute_types.h"

namespace switchyard::ops::detail {

kernels::RowType row_type(const at::Tensor& rows);
// float64 for float64 rows, else float32: the type weights are read and summed in.
at::ScalarType row_acc_dtype(const at::Tensor& rows);

void check_permute_tokens(const at::Tensor& x, const at::Tensor& token_index,
                          const at::Tensor& expert_index);
void check_unpermute_tokens(const at::Tensor& rows, const at::Tensor& token_index,
                            const at::Tensor& expert_index,
                            const std::optional<at::Tensor>& weights,
                            const c10::SymInt& num_tokens);
void check_unpermute_tokens_backward(const at::Tensor& grad_y, const at::Tensor& rows,
                                     const at::Tensor& token_index,
                                     const at::Tensor& expert_index,
                                     const std::optional<at::Tensor>& weights, bool weights_grad);

// Outputs of unpermute_tokens_backward that were not asked for are empty [0] tensors.
at::Tensor not_requested(const at::TensorOptions& options);

// Everything a kernel launch needs, checked and contiguous; the tensors keep the raw
// pointers alive. Shared by the CPU and CUDA implementations so that they differ only in
// the launcher they call.
struct PermuteCall {
  at::Tensor x, token_index, expert_index;
  at::Tensor rows;  // [S,d], written by the kernel
  kernels::PermuteParams params;
};
PermuteCall prepare_permute_tokens(const at::Tensor& x, const at::Tensor& token_index,
                                   const at::Tensor& expert_index);

struct UnpermuteCall {
  at::Tensor rows, token_index, expert_index;
  at::Tensor weights;  // [S] in the accumulation dtype; undefined when absent
  at::Tensor y;        // [T,d], written by the kernel
  kernels::PermuteParams params;
  const void* weights_ptr() const { return weights.defined() ? weights.data_ptr() : nullptr; }
};
UnpermuteCall prepare_unpermute_tokens(const at::Tensor& rows, const at::Tensor& token_index,
                                       const at::Tensor& expert_index,
                                       const std::optional<at::Tensor>& weights,
                                       int64_t num_tokens);

struct UnpermuteBackwardCall {
  at::Tensor grad_y;  // [T,d] in rows' dtype
  at::Tensor rows;    // contiguous when weights_grad, else as given (never read)
  at::Tensor token_index, expert_index;
  at::Tensor weights;       // [S] accumulation dtype; undefined when absent
  at::Tensor grad_rows;     // [S,d] rows' dtype; undefined when not asked for
  at::Tensor grad_weights;  // [S] accumulation dtype; undefined when not asked for
  at::ScalarType weights_dtype = at::kFloat;
  kernels::PermuteParams params;

  const void* weights_ptr() const { return weights.defined() ? weights.data_ptr() : nullptr; }
  void* grad_rows_ptr() const { return grad_rows.defined() ? grad_rows.data_ptr() : nullptr; }
  void* grad_weights_ptr() const {
    return grad_weights.defined() ? grad_weights.data_ptr() : nullptr;
  }
  // (grad_rows, grad_weights in the weights' dtype), [0] tensors where not asked for.
  std::tuple<at::Tensor, at::Tensor> results() const;
};
UnpermuteBackwardCall prepare_unpermute_tokens_backward(
    const at::Tensor& grad_y, const at::Tensor& rows, const at::Tensor& token_index,
    const at::Tensor& expert_index, const std::optional<at::Tensor>& weights, bool rows_grad,
    bool weights_grad);

// Raises the error for a valid slot whose token id is outside [0, num_tokens) (CPU index
// tensors).
[[noreturn]] void throw_bad_token(const char* op, const at::Tensor& token_index,
                                  const at::Tensor& expert_index, int64_t slot,
                                  int64_t num_tokens);

}  // namespace switchyard::ops::detail
