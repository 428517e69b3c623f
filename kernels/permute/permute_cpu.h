// CPU token-permutation kernels (OpenMP over rows or tokens).
//
// Pointers are raw and contiguous: x, y, grad_y [T,d]; rows, grad_rows [S,d] of the row
// type; token_index, expert_index [S]; weights, grad_weights [S] of the accumulation type
// (float, double for float64 rows). A slot i is valid when expert_index[i] >= 0; the
// others (the tail of a routing) are never read, in rows, weights or token_index, and get
// zero rows / zero weight gradients.
//
// Note [Token id checks]
// The operators validate shapes and types, but whether every valid slot's token id lies in
// [0, T) is only known by reading the ids. The CPU kernels check each id where they read
// it and return the lowest offending slot (or -1 when all are in range), so the operator
// can raise an error naming it; the output is then unspecified. The CUDA kernels stop
// with a device-side assertion instead (nothing is copied back to the host to check).
#pragma once

#include <cstdint>

#include "kernels/permute/permute_types.h"

namespace switchyard::kernels {

// rows[i] = x[token_index[i]] for valid slots, 0 for the others. Returns the lowest slot
// with an out-of-range token id, or -1.
int64_t permute_tokens_cpu(const void* x, const int64_t* token_index,
                           const int64_t* expert_index, const PermuteParams& p, void* rows);

// y[t] = sum over valid slots i of token t, in ascending i, of weights[i] * rows[i]
// (weights null: 1). Returns the lowest slot with an out-of-range token id (checked before
// anything is written), or -1.
int64_t unpermute_tokens_cpu(const void* rows, const int64_t* token_index,
                             const int64_t* expert_index, const void* weights,
                             const PermuteParams& p, void* y);

// The backward of unpermute_tokens, in one pass over the valid slots:
//   grad_rows[i] = weights[i] * grad_y[token_index[i]]   (weights null: 1; skipped if null)
//   grad_weights[i] = <rows[i], grad_y[token_index[i]]>  (skipped if null; rows unread then)
// Returns the lowest slot with an out-of-range token id, or -1.
int64_t unpermute_tokens_backward_cpu(const void* grad_y, const void* rows,
                                      const int64_t* token_index, const int64_t* expert_index,
                                      const void* weights, const PermuteParams& p,
                                      void* grad_rows, void* grad_weights);

}  // namespace switchyard::kernels
