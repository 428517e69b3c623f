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
