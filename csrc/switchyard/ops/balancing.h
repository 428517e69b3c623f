// C++ API of the load-balancing losses, the auxiliary-loss-free bias update, the router
// helpers and the MoE++ zero-computation experts.
//
// Every function here calls its torch.ops.switchyard.* operator through the dispatcher, so
// a C++ caller gets exactly what Python gets: autograd, device dispatch, tracing. The
// operators themselves are composites of ATen ops (CompositeImplicitAutograd; the
// in-place bias update is CompositeExplicitAutograd), implemented in losses.cpp,
// bias_update.cpp, router.cpp and zero_compute.cpp; docs/losses.md states each formula.
//
// Shape legend: T tokens, d hidden size, E router outputs (routed experts plus AdaMoE null
// experts and MoE++ zero-computation experts; never the DeepSeekMoE shared experts, which
// are not routed), K top-k, L sequence length, Nc constant experts.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/string_view.h>

#include <optional>

namespace switchyard::ops {

// ---- load-balancing losses ------------------------------------------------------------
// Each returns a 0-d tensor in float32 (float64 for float64 logits) with no coefficient
// applied: the caller scales it. score_func is "softmax" or "sigmoid" and chooses the
// normalised score p the losses balance (see Note [Normalised scores] in losses.cpp).

// Switch Transformer / GShard auxiliary loss, E * sum_e f_e P_e (1 when perfectly
// balanced). logits_TE [T,E] floating, topk_experts_TK [T,K] int64 with values in [0,E).
// The last num_null_experts of the E outputs are AdaMoE null experts, balanced as a pool.
at::Tensor switch_aux_loss(const at::Tensor& logits_TE, const at::Tensor& topk_experts_TK,
                           c10::string_view score_func = "softmax",
                           int64_t num_null_experts = 0);

// ST-MoE router z-loss, mean_t (logsumexp_e logits_{t,e})^2.
at::Tensor z_loss(const at::Tensor& logits_TE);

// DeepSeek-V3 sequence-wise balance loss over T/seq_len sequences of seq_len tokens.
at::Tensor sequence_aux_loss(const at::Tensor& logits_TE, const at::Tensor& topk_experts_TK,
                             int64_t seq_len, c10::string_view score_func = "softmax");

// DeepSeek-V3 auxiliary-loss-free balancing, in place and outside autograd:
// bias_E += update_rate * sign(mean(load_E) - load_E).
void update_expert_bias_(at::Tensor& bias_E, const at::Tensor& expert_load_E,
                         double update_rate);

// ---- router ---------------------------------------------------------------------------
// Switch Transformer multiplicative jitter: x * U(1-eps, 1+eps), noise from torch's default
// generator. eps must lie in [0, 1]; eps == 0 returns x itself.
at::Tensor router_jitter(const at::Tensor& x, double eps);

// Router logits x_Td @ weight_Ed^T, plus the MoE++ gating residual
// prev_logits_TEp @ residual_weight_EEp^T when both are given.
at::Tensor router_logits(const at::Tensor& x_Td, const at::Tensor& weight_Ed,
                         const std::optional<at::Tensor>& prev_logits_TEp = std::nullopt,
                         const std::optional<at::Tensor>& residual_weight_EEp = std::nullopt);

// ---- MoE++ zero-computation experts --------------------------------------------------
// Sum over the slots routed to a zero / copy / constant expert (ids first_expert ..
// first_expert+num_zero+num_copy+Nc-1, in that order) of weight * expert(x). Returns
// [T,d] in x's dtype. num_experts >= 0 also checks the ids and the id range against it.
at::Tensor zero_compute_experts(const at::Tensor& x_Td, const at::Tensor& topk_weights_TK,
                                const at::Tensor& topk_experts_TK, int64_t first_expert,
                                int64_t num_zero, int64_t num_copy,
                                const at::Tensor& const_vectors_Nd,
                                const at::Tensor& const_gate_weight_N2d,
                                int64_t num_experts = -1);

namespace detail {

// Checks that every value of ids lies in [0, num_experts). On host-readable tensors (real
// CPU tensors) it throws at once with the offending range; elsewhere (CUDA, fake or
// functional tensors under torch.compile) it enqueues an asynchronous device assert, so
// the check never forces a host synchronisation. See Note [Checking expert ids].
void check_expert_ids(const at::Tensor& ids, const c10::SymInt& num_experts,
                      const char* op_name, const char* arg_name);

}  // namespace detail

}  // namespace switchyard::ops
