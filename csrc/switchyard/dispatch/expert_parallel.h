// ExpertParallel: nn::ExpertParallelism over a TokenDispatcher -- the distributed way an
// MoELayer runs its routed experts (dispatch -> local GroupedExperts -> combine).
//
//   auto ep = std::make_shared<ExpertParallel>(groups.expert_parallel,
//                                             ExpertPlacement::contiguous(E, EP));
//   layer->enable_expert_parallel(ep);   // keeps only this rank's experts
//
// last_stats() is the DispatchStats of the latest forward on this rank (a diagnostic; the
// dispatch itself keeps no state, see token_dispatcher.h).
#pragma once

#include <optional>

#include "switchyard/dispatch/token_dispatcher.h"
#include "switchyard/nn/expert_parallelism.h"

namespace switchyard::dispatch {

class ExpertParallel : public nn::ExpertParallelism {
 public:
  // Collective over `group`: fails on every rank, naming the ranks, when their placements
  // differ (comm/agreement.h).
  ExpertParallel(comm::Communicator group, ExpertPlacement placement);

  int64_t num_experts() const override { return dispatcher_.placement().num_experts(); }
  std::vector<int64_t> local_experts() const override;
  at::Tensor run_routed(const at::Tensor& x_Td, const ops::Routing& routing,
                        nn::GroupedExpertsImpl& local_experts) override;

  // Live re-placement (csrc/switchyard/placement/live_placement.h): route through `placement`
  // from the next forward on. Collective over the group: the ranks must pass the same map
  // (checked, like the constructor). The caller moves the experts' weights to match.
  void set_placement(ExpertPlacement placement);

  const TokenDispatcher& dispatcher() const { return dispatcher_; }
  const std::optional<DispatchStats>& last_stats() const { return last_stats_; }

 private:
  TokenDispatcher dispatcher_;
  std::optional<DispatchStats> last_stats_;
};

}  // namespace switchyard::dispatch
