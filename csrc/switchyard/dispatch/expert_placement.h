// ExpertPlacement: which rank of the expert-parallel group holds each routed expert.
//
// The default puts contiguous blocks of experts on consecutive ranks (E divisible by R:
// E/R each; otherwise the first E % R ranks hold one more). Any map is allowed as long
// as every rank holds at least one expert: uneven experts-per-rank, interleaved or random
// placements. A rank's local experts are listed in ascending global id order; that is
// the order of the rows of its GroupedExperts weights ([E_local, d, f]).
//
// hash() is a stable 64-bit FNV-1a of (R, the map): ranks compare it at start-up
// (check_same_config) so a job whose ranks disagree on the placement fails loudly.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace switchyard::dispatch {

class ExpertPlacement {
 public:
  // Contiguous blocks on consecutive ranks: the first E % R ranks hold E / R + 1 experts,
  // the others E / R. Needs E >= R.
  static ExpertPlacement contiguous(int64_t num_experts, int64_t num_ranks);

  // rank_of_expert[e] = the rank holding expert e. Throws c10::ValueError when an entry
  // is outside [0, num_ranks) or a rank holds no expert.
  ExpertPlacement(std::vector<int64_t> rank_of_expert, int64_t num_ranks);

  int64_t num_experts() const { return static_cast<int64_t>(rank_of_expert_.size()); }
  int64_t num_ranks() const { return num_ranks_; }
  int64_t rank_of(int64_t expert) const;
  // Position of `expert` among its rank's local experts (its row in the local weights).
  int64_t local_index_of(int64_t expert) const;
  // Global ids of rank r's experts, ascending.
  const std::vector<int64_t>& local_experts(int64_t rank) const;
  int64_t num_local_experts(int64_t rank) const {
    return static_cast<int64_t>(local_experts(rank).size());
  }
  const std::vector<int64_t>& rank_of_expert() const { return rank_of_expert_; }

  // [E] int64 tensors on `device`: the rank of each expert; its local index.
  at::Tensor rank_of_expert_tensor(const c10::Device& device) const;
  at::Tensor local_index_tensor(const c10::Device& device) const;

  uint64_t hash() const;
  std::string to_string() const;  // "ExpertPlacement(R=2, [0, 0, 1, 1])"

 private:
  std::vector<int64_t> rank_of_expert_;
  int64_t num_ranks_;
  std::vector<std::vector<int64_t>> local_;  // per rank, ascending global ids
  std::vector<int64_t> local_index_;         // per expert
};

bool operator==(const ExpertPlacement& a, const ExpertPlacement& b);

}  // namespace switchyard::dispatch
