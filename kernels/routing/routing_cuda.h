// CUDA routing kernels: launchers that enqueue on `stream` and never synchronize.
//
// Each launcher takes a device workspace of at least *_workspace_bytes(...) bytes (sized
// from the same parameters, 256-byte aligned) that the caller allocates on the logits'
// device. Errors from the CUDA runtime throw std::runtime_error naming file and line.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/routing/routing_types.h"

namespace switchyard::kernels {

size_t topk_router_cuda_workspace_bytes(LogitsType type, const TopkRouterParams& p);
void topk_router_cuda(const void* logits, LogitsType type, const void* bias,
                      const TopkRouterParams& p, const TopkRouterOutputs& out, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream);

size_t topk_router_backward_cuda_workspace_bytes(LogitsType type, const TopkBackwardParams& p);
void topk_router_backward_cuda(const void* logits, LogitsType type,
                               const TopkBackwardInputs& in, const TopkBackwardParams& p,
                               void* grad_logits, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream);

size_t expert_choice_cuda_workspace_bytes(LogitsType type, const ExpertChoiceParams& p);
void expert_choice_cuda(const void* logits, LogitsType type, const ExpertChoiceParams& p,
                        const ExpertChoiceOutputs& out, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream);

// Needs no workspace.
void expert_choice_backward_cuda(const void* logits, LogitsType type, const void* grad_weights,
                                 const int64_t* token_index, const int64_t* expert_index,
                                 const ExpertChoiceParams& p, void* grad_logits,
                                 cudaStream_t stream);

}  // namespace switchyard::kernels
