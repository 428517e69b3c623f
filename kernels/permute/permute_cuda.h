// CUDA token-permutation kernels: launchers that enqueue on `stream` and never
// synchronize. Same contracts as permute_cpu.h, with two differences:
//   - an out-of-range token id of a valid slot stops the kernel with a device-side
//     assertion (the error surfaces at the next synchronization; Note [Token id checks]);
//   - the operator guarantees T <= 2^31 - 1 and S <= 2^31 - 1 (32-bit sort keys).
// Errors from the CUDA runtime throw std::runtime_error naming file and line.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/permute/permute_types.h"

namespace switchyard::kernels {

void permute_tokens_cuda(const void* x, const int64_t* token_index, const int64_t* expert_index,
                         const PermuteParams& p, void* rows, cudaStream_t stream);

// unpermute_tokens groups the slots by token with a (stable) radix sort: it needs a device
// workspace of at least this many bytes, allocated by the caller on the rows' device.
size_t unpermute_tokens_cuda_workspace_bytes(const PermuteParams& p);
void unpermute_tokens_cuda(const void* rows, const int64_t* token_index,
                           const int64_t* expert_index, const void* weights,
                           const PermuteParams& p, void* y, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream);

// Needs no workspace. grad_rows / grad_weights may be null (not computed).
void unpermute_tokens_backward_cuda(const void* grad_y, const void* rows,
                                    const int64_t* token_index, const int64_t* expert_index,
                                    const void* weights, const PermuteParams& p,
                                    void* grad_rows, void* grad_weights, cudaStream_t stream);

}  // namespace switchyard::kernels
