#include "switchyard/dispatch/expert_placement.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>

namespace switchyard::dispatch {

ExpertPlacement ExpertPlacement::contiguous(int64_t num_experts, int64_t num_ranks) {
  TORCH_CHECK_VALUE(num_ranks >= 1, "ExpertPlacement.contiguous: expected num_ranks >= 1, got ",
                    num_ranks);
  TORCH_CHECK_VALUE(num_experts >= num_ranks, "ExpertPlacement.contiguous: expected at least one "
                    "expert per rank (num_experts >= num_ranks), got num_experts = ", num_experts,
                    " for num_ranks = ", num_ranks);
  // The first E % R ranks hold E / R + 1 experts, the others E / R.
  const int64_t base = num_experts / num_ranks, extra = num_experts % num_ranks;
  std::vector<int64_t> map;
  map.reserve(num_experts);
  for (int64_t r = 0; r < num_ranks; ++r) {
    const int64_t n = base + (r < extra ? 1 : 0);
    for (int64_t i = 0; i < n; ++i) map.push_back(r);
  }
  return ExpertPlacement(std::move(map), num_ranks);
}

ExpertPlacement::ExpertPlacement(std::vector<int64_t> rank_of_expert, int64_t num_ranks)
    : rank_of_expert_(std::move(rank_of_expert)), num_ranks_(num_ranks) {
  TORCH_CHECK_VALUE(num_ranks_ >= 1, "ExpertPlacement: expected num_ranks >= 1, got ", num_ranks_);
  TORCH_CHECK_VALUE(!rank_of_expert_.empty(), "ExpertPlacement: expected at least one expert");
  local_.assign(num_ranks_, {});
  local_index_.resize(rank_of_expert_.size());
  for (size_t e = 0; e < rank_of_expert_.size(); ++e) {
    const int64_t r = rank_of_expert_[e];
    TORCH_CHECK_VALUE(r >= 0 && r < num_ranks_, "ExpertPlacement: expert ", e, " is placed on rank ",
                      r, ", outside the expert-parallel group's ranks [0, ", num_ranks_, ")");
    local_index_[e] = static_cast<int64_t>(local_[r].size());
    local_[r].push_back(static_cast<int64_t>(e));
  }
  for (int64_t r = 0; r < num_ranks_; ++r) {
    TORCH_CHECK_VALUE(!local_[r].empty(), "ExpertPlacement: rank ", r, " of ", num_ranks_,
                      " holds no expert; every rank of the expert-parallel group needs at least "
                      "one (", to_string(), ")");
  }
}

int64_t ExpertPlacement::rank_of(int64_t expert) const {
  TORCH_CHECK_INDEX(expert >= 0 && expert < num_experts(), "ExpertPlacement: expert ", expert,
                    " outside [0, ", num_experts(), ")");
  return rank_of_expert_[expert];
}

int64_t ExpertPlacement::local_index_of(int64_t expert) const {
  TORCH_CHECK_INDEX(expert >= 0 && expert < num_experts(), "ExpertPlacement: expert ", expert,
                    " outside [0, ", num_experts(), ")");
  return local_index_[expert];
}

const std::vector<int64_t>& ExpertPlacement::local_experts(int64_t rank) const {
  TORCH_CHECK_INDEX(rank >= 0 && rank < num_ranks_, "ExpertPlacement: rank ", rank,
                    " outside [0, ", num_ranks_, ")");
  return local_[rank];
}

at::Tensor ExpertPlacement::rank_of_expert_tensor(const c10::Device& device) const {
  return at::tensor(rank_of_expert_, at::kLong).to(device);
}

at::Tensor ExpertPlacement::local_index_tensor(const c10::Device& device) const {
  return at::tensor(local_index_, at::kLong).to(device);
}

uint64_t ExpertPlacement::hash() const {
  // FNV-1a over the little-endian bytes of R, E and the map: stable across runs and hosts.
  uint64_t h = 14695981039346656037ULL;
  auto mix = [&h](int64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= static_cast<uint64_t>(v >> (8 * i)) & 0xffU;
      h *= 1099511628211ULL;
    }
  };
  mix(num_ranks_);
  mix(num_experts());
  for (int64_t r : rank_of_expert_) mix(r);
  return h;
}

std::string ExpertPlacement::to_string() const {
  std::ostringstream os;
  os << "ExpertPlacement(R=" << num_ranks_ << ", [";
  for (size_t e = 0; e < rank_of_expert_.size(); ++e) os << (e ? ", " : "") << rank_of_expert_[e];
  os << "])";
  return os.str();
}

bool operator==(const ExpertPlacement& a, const ExpertPlacement& b) {
  return a.num_ranks() == b.num_ranks() && a.rank_of_expert() == b.rank_of_expert();
}

}  // namespace switchyard::dispatch
