// zero_compute_experts: the zero-computation experts of MoE++ (Jin et al. 2024, "MoE++:
// Accelerating Mixture-of-Experts Methods with Zero-Computation Experts").
//
// They take expert ids F .. F+Z+Cp+Nc-1 (F = first_expert), in this order:
//   Z  zero experts      E(x) = 0                          (the token is discarded)
//   Cp copy experts      E(x) = x                          (the token skips the layer)
//   Nc constant experts  E_i(x) = a1 x + a2 v_i,  [a1, a2] = softmax(G_i x)
// with v_i = const_vectors[i] [d] and G_i = const_gate_weight[i] [2, d]. The op returns
//   y_t = sum_j w_{t,j} E_{ids_{t,j}}(x_t)
// over the slots (t, j) that chose one of these experts; slots on other experts add 0.
// These experts run where the token lives: they never travel through the dispatcher.
//
// A composite of ATen ops (CompositeImplicitAutograd): vectorised over tokens with masks,
// no loop over tokens or slots; differentiable w.r.t. x, topk_weights, const_vectors and
// const_gate_weight.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "switchyard/ops/balancing.h"

namespace switchyard::ops {

namespace {

constexpr const char* kOp = "zero_compute_experts";

void check_arguments(const at::Tensor& x_Td, const at::Tensor& w_TK, const at::Tensor& ids_TK,
                     int64_t first_expert, int64_t num_zero, int64_t num_copy,
                     const at::Tensor& v_Nd, const at::Tensor& g_N2d, int64_t num_experts) {
  TORCH_CHECK(x_Td.dim() == 2, kOp, ": expected x to be a 2-D [T, d] tensor, got ", x_Td.dim(),
              "-D with shape ", x_Td.sym_sizes());
  TORCH_CHECK(at::isFloatingType(x_Td.scalar_type()), kOp,
              ": expected x to be floating point, got ", x_Td.scalar_type());
  TORCH_CHECK(w_TK.dim() == 2, kOp, ": expected topk_weights to be a 2-D [T, K] tensor, got ",
              w_TK.dim(), "-D with shape ", w_TK.sym_sizes());
  TORCH_CHECK(at::isFloatingType(w_TK.scalar_type()), kOp,
              ": expected topk_weights to be floating point, got ", w_TK.scalar_type());
  TORCH_CHECK(ids_TK.scalar_type() == at::kLong, kOp,
              ": expected topk_experts to be int64, got ", ids_TK.scalar_type());
  TORCH_CHECK(ids_TK.sym_sizes() == w_TK.sym_sizes(), kOp,
              ": expected topk_experts to have the shape of topk_weights ", w_TK.sym_sizes(),
              ", got ", ids_TK.sym_sizes());
  TORCH_CHECK(w_TK.sym_size(0) == x_Td.sym_size(0), kOp,
              ": expected topk_weights to have one row per token of x (T = ", x_Td.sym_size(0),
              "), got ", w_TK.sym_size(0), " rows");
  TORCH_CHECK(first_expert >= 0, kOp, ": expected first_expert >= 0, got ", first_expert);
  TORCH_CHECK(num_zero >= 0, kOp, ": expected num_zero >= 0, got ", num_zero);
  TORCH_CHECK(num_copy >= 0, kOp, ": expected num_copy >= 0, got ", num_copy);
  TORCH_CHECK(v_Nd.dim() == 2 && v_Nd.sym_size(1) == x_Td.sym_size(1), kOp,
              ": expected const_vectors to be a 2-D [Nc, d] tensor with d = ", x_Td.sym_size(1),
              " (x's hidden size), got shape ", v_Nd.sym_sizes());
  TORCH_CHECK(g_N2d.dim() == 3 && g_N2d.sym_size(0) == v_Nd.sym_size(0) &&
                  g_N2d.sym_size(1) == 2 && g_N2d.sym_size(2) == x_Td.sym_size(1),
              kOp, ": expected const_gate_weight of shape [Nc, 2, d] = [", v_Nd.sym_size(0),
              ", 2, ", x_Td.sym_size(1), "] (Nc from const_vectors), got ", g_N2d.sym_sizes());
  TORCH_CHECK(v_Nd.scalar_type() == x_Td.scalar_type() &&
                  g_N2d.scalar_type() == x_Td.scalar_type(),
              kOp, ": expected const_vectors and const_gate_weight to have x's dtype ",
              x_Td.scalar_type(), ", got ", v_Nd.scalar_type(), " and ", g_N2d.scalar_type());
  for (const auto* t : {&w_TK, &ids_TK, &v_Nd, &g_N2d}) {
    TORCH_CHECK(t->device() == x_Td.device(), kOp,
                ": expected every tensor on the device of x (", x_Td.device(), "), got ",
                t->device());
  }
  if (num_experts >= 0) {
    const auto last = v_Nd.sym_size(0) + first_expert + num_zero + num_copy;  // one past
    TORCH_CHECK(last <= num_experts, kOp, ": expected the zero-computation experts [",
                first_expert, ", ", last, ") (first_expert + num_zero + num_copy + Nc) to fit "
                "in num_experts = ", num_experts);
    detail::check_expert_ids(ids_TK, num_experts, kOp, "topk_experts");
  }
}

at::Tensor zero_compute_experts_impl(const at::Tensor& x_Td, const at::Tensor& topk_weights_TK,
                                     const at::Tensor& topk_experts_TK, int64_t first_expert,
                                     int64_t num_zero, int64_t num_copy,
                                     const at::Tensor& const_vectors_Nd,
                                     const at::Tensor& const_gate_weight_N2d,
                                     int64_t num_experts) {
  check_arguments(x_Td, topk_weights_TK, topk_experts_TK, first_expert, num_zero, num_copy,
                  const_vectors_Nd, const_gate_weight_N2d, num_experts);
  const auto w_TK = topk_weights_TK.to(x_Td.scalar_type());
  const int64_t first_copy = first_expert + num_zero;
  const int64_t first_const = first_copy + num_copy;

  // 1. Zero experts add nothing. Copy experts: the summed weight of each token's copy slots
  //    scales x itself.
  const auto is_copy_TK = topk_experts_TK.ge(first_copy).logical_and(topk_experts_TK.lt(first_const));
  auto x_scale_T = (w_TK * is_copy_TK).sum(1);

  // 2. Constant experts: W_{t,i} = summed weight of the slots of token t on constant
  //    expert i ([T, K, Nc] one-hot of the ids, Nc is small), and the gates
  //    [a1, a2]_{t,i} = softmax_c(G_i x_t) for every (t, i) in one matmul.
  const auto const_ids_N =
      at::arange(c10::Scalar(const_vectors_Nd.sym_size(0)), topk_experts_TK.options()) +
      first_const;
  const auto on_const_TKN = topk_experts_TK.unsqueeze(-1).eq(const_ids_N);
  const auto W_TN = (w_TK.unsqueeze(-1) * on_const_TKN).sum(1);
  const auto gates_TN2 =
      at::softmax(at::matmul(x_Td, const_gate_weight_N2d.flatten(0, 1).t())
                      .unflatten_symint(1, {const_vectors_Nd.sym_size(0), 2}),
                  -1);
  const auto a1_TN = gates_TN2.select(-1, 0);
  const auto a2_TN = gates_TN2.select(-1, 1);

  // 3. y = (copy weight + sum_i W a1) x + (W a2) V.
  x_scale_T = x_scale_T + (W_TN * a1_TN).sum(1);
  return x_scale_T.unsqueeze(1) * x_Td + at::matmul(W_TN * a2_TN, const_vectors_Nd);
}

}  // namespace

at::Tensor zero_compute_experts(const at::Tensor& x_Td, const at::Tensor& topk_weights_TK,
                                const at::Tensor& topk_experts_TK, int64_t first_expert,
                                int64_t num_zero, int64_t num_copy,
                                const at::Tensor& const_vectors_Nd,
                                const at::Tensor& const_gate_weight_N2d, int64_t num_experts) {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::zero_compute_experts", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                            int64_t, int64_t, const at::Tensor&, const at::Tensor&, int64_t)>();
  return handle.call(x_Td, topk_weights_TK, topk_experts_TK, first_expert, num_zero, num_copy,
                     const_vectors_Nd, const_gate_weight_N2d, num_experts);
}

}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CompositeImplicitAutograd, m) {
  m.impl("zero_compute_experts", &switchyard::ops::zero_compute_experts_impl);
}
