// C++ API of the token permutation operators: the gather of token rows into a routing's
// grouped (by expert) order, and the weighted scatter-sum back to token order.
//
// Each function calls its torch.ops.switchyard.* operator through the dispatcher, so a C++
// caller gets what Python gets: CPU/CUDA dispatch, autograd, fake tensors. docs/permute.md
// states the semantics.
//
// Shape legend: T tokens, S slots (the grouped arrays of a Routing or ExpertChoiceRouting:
// kept slots grouped by expert, then a tail with expert_index -1), d hidden size.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace switchyard::ops {

// rows[i] = x_Td[token_index_S[i]] where expert_index_S[i] >= 0, else 0. x_Td float32,
// float64, bfloat16 or float16; token_index_S, expert_index_S int64. -> [S,d].
// Differentiable w.r.t. x_Td.
at::Tensor permute_tokens(const at::Tensor& x_Td, const at::Tensor& token_index_S,
                          const at::Tensor& expert_index_S);

// y[t] = sum of weights_S[i] * rows_Sd[i] over the slots i of token t with
// expert_index_S[i] >= 0, summed in ascending i (deterministic). No weights: 1. The tail's
// rows and weights are never read. -> [num_tokens, d] in rows' dtype (arithmetic in float32,
// float64 for float64 rows). Differentiable w.r.t. rows_Sd and weights_S.
at::Tensor unpermute_tokens(const at::Tensor& rows_Sd, const at::Tensor& token_index_S,
                            const at::Tensor& expert_index_S,
                            const std::optional<at::Tensor>& weights_S, int64_t num_tokens);

}  // namespace switchyard::ops
