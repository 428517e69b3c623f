// GroupedExperts: the feed-forward networks of many experts as stacked weights, one
// [E, in, out] parameter per projection (not E sub-modules), so one grouped product
// (switchyard::ops::grouped_mm) runs every expert at once.
//
//   swiglu: expert e(x) = (silu(x gate_proj[e]) * (x up_proj[e])) down_proj[e]
//   gelu:   expert e(x) = gelu(x up_proj[e]) down_proj[e]        (exact erf GELU)
//
// gate_proj, up_proj: [E, d, f]; down_proj: [E, f, d]. The input is a block of rows
// grouped by expert (permute_tokens' output) with counts[e] rows for expert e; rows past
// sum(counts) are neither read nor written (they come out 0). Experts without rows cost
// nothing.
//
// Note [Expert activations in backward]
// Forward and backward are one autograd node with a hand-written backward: it keeps the
// input rows and the two projections (gate and up) and recomputes the activation in
// backward instead of storing it, so the saved activations are d + 2f numbers per row
// against the 4f + d a chain of autograd ops would keep.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

namespace switchyard::nn {

class GroupedExpertsImpl : public torch::nn::Module {
 public:
  GroupedExpertsImpl(int64_t num_experts, int64_t d_model, int64_t ffn_hidden,
                     std::string activation = "swiglu", double init_std = 0.02);

  // rows_Nd [N, d] grouped by expert, counts_E [E] int64 on rows' device -> [N, d].
  at::Tensor forward(const at::Tensor& rows_Nd, const at::Tensor& counts_E);

  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  int64_t num_experts() const { return num_experts_; }
  // After live re-placement replaced the weights' rows (set_data, sharding/expert_migration.cpp):
  // take the expert count from them. Throws c10::ValueError when the weights disagree.
  void sync_num_experts();
  const std::string& activation() const { return activation_; }

  at::Tensor gate_proj;  // [E, d, f], swiglu only
  at::Tensor up_proj;    // [E, d, f]
  at::Tensor down_proj;  // [E, f, d]

 private:
  int64_t num_experts_, d_model_, ffn_hidden_;
  std::string activation_;
  double init_std_;
};
TORCH_MODULE(GroupedExperts);

}  // namespace switchyard::nn
