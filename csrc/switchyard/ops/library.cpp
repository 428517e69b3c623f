// The one place where every switchyard operator schema is declared.
//
// Note [Operator layout]
// Each operator's kernels live in kernels/ (no torch); each operator's dispatch-key
// implementations live in its own file in this folder and register themselves with
// TORCH_LIBRARY_IMPL(switchyard, <Key>, m). Composite operators (written with ATen ops,
// differentiable and device-generic by construction) are registered in their own files
// under CompositeImplicitAutograd.
//
// Shape legend: T tokens, E experts (all router outputs), E_r routed experts (those that
// travel to expert FFNs; the rest are AdaMoE null experts or MoE++ zero-computation
// experts, which run locally), K top-k, S = T*K slots, C capacity per expert.
#include <torch/library.h>

TORCH_LIBRARY(switchyard, m) {
  // ---- routing policies --------------------------------------------------------------
  // Top-k routing. Returns, in order:
  //   topk_weights [T,K] float (f64 for f64 logits)   combine weight of each slot (0 if dropped)
  //   topk_experts [T,K] int64                          selected expert of each slot, best first
  //   token_index  [S]   int64   slots grouped by routed expert (ascending expert, then token);
  //   expert_index [S]   int64   the kept routed slots first, then the rest (dropped or
  //   slot_index   [S]   int64   non-routed, expert_index = -1) in ascending slot order.
  //   slot_weights [S]   float   combine weight in grouped order (0 in the tail)
  //   expert_counts [E_r] int64  kept slots per routed expert
  //   expert_load   [E]   int64  selections per expert before the capacity limit
  //   num_dropped   []    int64  slots dropped by the capacity limit
  m.def(
      "route_topk(Tensor logits, int k, *, str score_func=\"softmax\", bool renormalize=True, "
      "float scaling_factor=1.0, Tensor? selection_bias=None, int num_groups=1, "
      "int topk_groups=0, str group_score=\"max\", int num_routed_experts=-1, "
      "float capacity_factor=0.0, str drop_policy=\"position\") -> "
      "(Tensor topk_weights, Tensor topk_experts, Tensor token_index, Tensor expert_index, "
      "Tensor slot_index, Tensor slot_weights, Tensor expert_counts, Tensor expert_load, "
      "Tensor num_dropped)");
  m.def(
      "route_topk_backward(Tensor grad_topk_weights, Tensor grad_slot_weights, Tensor logits, "
      "Tensor topk_experts, Tensor slot_index, Tensor expert_counts, int k, str score_func, "
      "bool renormalize, float scaling_factor) -> Tensor");

  // Expert-choice routing (Zhou et al. 2022): each expert takes its top-C tokens by score,
  // C = min(T, ceil(capacity_factor * T * k / E)). Returns weights [E*C] (the scores; float,
  // f64 for f64 logits; first, like route_topk's), token_index and expert_index [E*C]
  // grouped by expert with ascending tokens inside an expert, expert_counts [E], and
  // num_unrouted_tokens [] (tokens no expert chose).
  m.def(
      "route_expert_choice(Tensor logits, float capacity_factor, int k=1, *, "
      "str score_func=\"softmax\") -> (Tensor weights, Tensor token_index, "
      "Tensor expert_index, Tensor expert_counts, Tensor num_unrouted_tokens)");
  m.def(
      "route_expert_choice_backward(Tensor grad_weights, Tensor logits, Tensor token_index, "
      "Tensor expert_index, str score_func) -> Tensor");

  // ---- load-balancing losses (CompositeImplicitAutograd) -------------------------------
  m.def(
      "switch_aux_loss(Tensor logits, Tensor topk_experts, *, str score_func=\"softmax\", "
      "int num_null_experts=0) -> Tensor");
  m.def("z_loss(Tensor logits) -> Tensor");
  m.def(
      "sequence_aux_loss(Tensor logits, Tensor topk_experts, int seq_len, *, "
      "str score_func=\"softmax\") -> Tensor");
  // Auxiliary-loss-free balancing (DeepSeek-V3): bias += rate * sign(mean(load) - load).
  m.def("update_expert_bias_(Tensor(a!) bias, Tensor expert_load, float update_rate) -> ()");

  // ---- token permutation (kernels/permute) ---------------------------------------------
  // permute_tokens gathers token rows into the grouped order of a routing: row i of the
  // result is x[token_index[i]] where expert_index[i] >= 0 and zeros where it is -1 (the
  // tail of dropped / local slots). x [T,d], token_index and expert_index [S] int64 -> [S,d].
  m.def("permute_tokens(Tensor x, Tensor token_index, Tensor expert_index) -> Tensor");
  // unpermute_tokens is the inverse with the combine weights: y[t] = sum of
  // weights[i] * rows[i] over the grouped rows i of token t (expert_index[i] >= 0), summed
  // in ascending i (deterministic; no atomics). weights None means 1. rows [S,d] -> [T,d].
  m.def(
      "unpermute_tokens(Tensor rows, Tensor token_index, Tensor expert_index, Tensor? weights, "
      "SymInt num_tokens) -> Tensor");
  // The fused backward of unpermute_tokens: grad_rows[i] = weights[i] * grad_y[token_index[i]]
  // and grad_weights[i] = <rows[i], grad_y[token_index[i]]> (0 in the tail), in one pass.
  m.def(
      "unpermute_tokens_backward(Tensor grad_y, Tensor rows, Tensor token_index, "
      "Tensor expert_index, Tensor? weights, bool rows_grad, bool weights_grad) -> "
      "(Tensor grad_rows, Tensor grad_weights)");

  // ---- grouped matrix products (the experts' feed-forward) -----------------------------
  // Rows of a [N,k] grouped by expert: expert e owns counts[e] consecutive rows, in expert
  // order, the first sum(counts) rows; the remaining rows are ignored and come out 0.
  //   grouped_mm:             out[rows of e] = a[rows of e] @ b[e]   b [E,k,n] -> [N,n]
  //                           (trans_b: b is [E,n,k] and b[e]^T is used)
  //   grouped_mm_weight_grad: out[e] = a[rows of e]^T @ g[rows of e]  -> [E,k,n]
  //                           (0 for an expert without rows)
  m.def("grouped_mm(Tensor a, Tensor b, Tensor counts, *, bool trans_b=False) -> Tensor");
  m.def("grouped_mm_weight_grad(Tensor a, Tensor grad_out, Tensor counts) -> Tensor");

  // ---- the experts' SwiGLU activation, fused (kernels/activation) ----------------------
  // swiglu: silu(gate) * up. swiglu_backward returns h = silu(gate) * up (recomputed, for the
  // down projection's weight gradient) and the gradients w.r.t. gate and up, in one pass.
  m.def("swiglu(Tensor gate, Tensor up) -> Tensor");
  m.def(
      "swiglu_backward(Tensor grad_h, Tensor gate, Tensor up) -> "
      "(Tensor h, Tensor grad_gate, Tensor grad_up)");

  // ---- router and zero-computation experts (CompositeImplicitAutograd) ----------------
  // router_jitter draws noise from torch's default generator (seeded: torch.manual_seed).
  m.def("router_jitter(Tensor x, float eps) -> Tensor", {at::Tag::nondeterministic_seeded});
  m.def(
      "router_logits(Tensor x, Tensor weight, Tensor? prev_logits=None, "
      "Tensor? residual_weight=None) -> Tensor");
  m.def(
      "zero_compute_experts(Tensor x, Tensor topk_weights, Tensor topk_experts, "
      "int first_expert, int num_zero, int num_copy, Tensor const_vectors, "
      "Tensor const_gate_weight, *, int num_experts=-1) -> Tensor");
}
