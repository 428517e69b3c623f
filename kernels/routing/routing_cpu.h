// CPU routing kernels (OpenMP over rows; see routing_math.h for the per-row arithmetic).
//
// Pointers are raw and contiguous; "acc" buffers are float, or double for Float64 logits.
// The operators in csrc/switchyard/ops/ validate every argument before calling these.
#pragma once

#include <cstdint>

#include "kernels/routing/routing_types.h"

namespace switchyard::kernels {

// route_topk forward. logits [T,E] of `type`; bias [E] acc or null (p.has_bias says which).
void topk_router_cpu(const void* logits, LogitsType type, const void* bias,
                     const TopkRouterParams& p, const TopkRouterOutputs& out);

// route_topk backward: grad_logits [T,E] acc.
void topk_router_backward_cpu(const void* logits, LogitsType type, const TopkBackwardInputs& in,
                              const TopkBackwardParams& p, void* grad_logits);

// route_expert_choice forward.
void expert_choice_cpu(const void* logits, LogitsType type, const ExpertChoiceParams& p,
                       const ExpertChoiceOutputs& out);

// route_expert_choice backward: grad_weights [E*C] acc -> grad_logits [T,E] acc.
void expert_choice_backward_cpu(const void* logits, LogitsType type, const void* grad_weights,
                                const int64_t* token_index, const int64_t* expert_index,
                                const ExpertChoiceParams& p, void* grad_logits);

}  // namespace switchyard::kernels
