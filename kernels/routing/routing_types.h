// Plain parameter and output records shared by the CPU and CUDA routing kernels.
//
// No torch here: the operators in csrc/switchyard/ops/ validate their arguments, allocate
// the outputs and fill these records; the kernels trust them.
//
// Shape legend: T tokens, E experts (all router outputs), E_r routed experts, K top-k,
// S = T*K slots, G expert groups, C capacity per expert.
#pragma once

#include <cstdint>

namespace switchyard::kernels {

// Element type of the logits. The arithmetic type ("acc") is float for every type but
// Float64, which computes and returns double.
enum class LogitsType : int32_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

enum class ScoreFunc : int32_t { kSoftmax = 0, kSigmoid = 1 };
enum class GroupScore : int32_t { kMax = 0, kTop2Sum = 1, kBalanced = 2 };
enum class DropPolicy : int32_t { kPosition = 0, kScore = 1 };

// Top-k routing (route_topk). Every field is validated by the operator.
struct TopkRouterParams {
  int64_t num_tokens = 0;          // T
  int64_t num_experts = 0;         // E
  int64_t k = 1;                   // K, in [1, E]
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  bool renormalize = true;
  double scaling_factor = 1.0;
  bool has_bias = false;           // selection_bias given ([E], acc type)
  int64_t num_groups = 1;          // G; E_r % G == 0
  int64_t topk_groups = 1;         // kept groups, in [1, G] (G = no limit)
  GroupScore group_score = GroupScore::kMax;
  int64_t num_routed_experts = 0;  // E_r, in [1, E]
  int64_t capacity = -1;           // C per routed expert; -1 = unlimited
  DropPolicy drop_policy = DropPolicy::kPosition;
  int num_threads = 1;             // CPU only: OpenMP threads to use
};

// Output pointers of route_topk; the acc-typed ones are float or double.
struct TopkRouterOutputs {
  void* topk_weights = nullptr;     // [T,K] acc
  int64_t* topk_experts = nullptr;  // [T,K]
  int64_t* token_index = nullptr;   // [S]
  int64_t* expert_index = nullptr;  // [S]
  int64_t* slot_index = nullptr;    // [S]
  void* slot_weights = nullptr;     // [S] acc
  int64_t* expert_counts = nullptr; // [E_r]
  int64_t* expert_load = nullptr;   // [E]
  int64_t* num_dropped = nullptr;   // [1]
};

// route_topk_backward. Gradients are acc typed and contiguous; grad_logits is written
// in acc type ([T,E]); the operator casts it to the logits' type.
struct TopkBackwardParams {
  int64_t num_tokens = 0;
  int64_t num_experts = 0;
  int64_t k = 1;
  int64_t num_routed_experts = 0;  // length of expert_counts
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  bool renormalize = true;
  double scaling_factor = 1.0;
  int num_threads = 1;
};

struct TopkBackwardInputs {
  const void* grad_topk_weights = nullptr;  // [T,K] acc
  const void* grad_slot_weights = nullptr;  // [S] acc
  const int64_t* topk_experts = nullptr;    // [T,K]
  const int64_t* slot_index = nullptr;      // [S]
  const int64_t* expert_counts = nullptr;   // [E_r]
};

// Expert-choice routing (route_expert_choice).
struct ExpertChoiceParams {
  int64_t num_tokens = 0;   // T
  int64_t num_experts = 0;  // E
  int64_t capacity = 0;     // C = min(T, ceil(capacity_factor * T * k / E))
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  int num_threads = 1;
};

struct ExpertChoiceOutputs {
  int64_t* token_index = nullptr;   // [E*C]
  int64_t* expert_index = nullptr;  // [E*C]
  void* weights = nullptr;          // [E*C] acc
  int64_t* expert_counts = nullptr; // [E]
  int64_t* num_unrouted = nullptr;  // [1]
};

}  // namespace switchyard::kernels
