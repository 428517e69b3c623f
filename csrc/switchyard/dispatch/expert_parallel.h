// ExpertParallel: nn::ExpertParallelism over a TokenDispatcher -- the distributed way an
// MoELayer runs its routed experts (dispatch -> local GroupedExperts -> combine).
//
//   auto ep = std::make_shared<ExpertParallel>(groups.expert_parallel,
//                                             ExpertPlacement::contiguous(E, EP));
//   layer->enable_expert_parallel(ep);   // keeps only this rank's experts
//
// last_stats() is the DispatchStats of the latest forward on this rank (a diagnostic; the
// dispatch itself keeps no state, see token_dispatcher.h).
//
// Speculation (speculation.h, docs/speculation.md) is per layer, so its state lives here:
// with speculation.capacity, each forward after the first takes the capacity path with
// capacities predicted from this layer's previous dispatch (CapacityPredictor), or, with
// speculation.routes, from the routes the layer predicted before its block's attention
// (prepare_routes: the predicted counts travel while the attention runs); counters()
// accumulates what the forwards cost.
#pragma once

#include <c10/core/Event.h>

#include <optional>

#include "switchyard/dispatch/speculation.h"
#include "switchyard/dispatch/token_dispatcher.h"
#include "switchyard/nn/expert_parallelism.h"

namespace switchyard::dispatch {

class ExpertParallel : public nn::ExpertParallelism {
 public:
  // Collective over `group`: fails on every rank, naming the ranks, when their placements
  // or speculation options differ (comm/agreement.h).
  ExpertParallel(comm::Communicator group, ExpertPlacement placement, SpeculationOptions speculation = {});

  int64_t num_experts() const override { return dispatcher_.placement().num_experts(); }
  std::vector<int64_t> local_experts() const override;
  at::Tensor run_routed(const at::Tensor& x_Td, const ops::Routing& routing,
                        nn::GroupedExpertsImpl& local_experts) override;

  // Speculative routing: with speculation.capacity and .routes. prepare_routes counts the
  // rows predicted_TK would send each peer and starts exchanging them (all_to_all_v, not
  // waited for); the next run_routed sizes its capacities from them (Note [Predicted
  // capacities] in expert_parallel.cpp). Collective over the group.
  bool wants_route_prediction() const override { return speculation_.capacity && speculation_.routes; }
  void prepare_routes(const at::Tensor& predicted_TK) override;

  // Live re-placement (csrc/switchyard/placement/live_placement.h): route through `placement`
  // from the next forward on. Collective over the group: the ranks must pass the same map
  // (checked, like the constructor). The caller moves the experts' weights to match.
  // Forgets the capacity history and any prepared prediction: counts per peer mean nothing
  // under a new map.
  void set_placement(ExpertPlacement placement);

  // Collective (checked like the placement); forgets the capacity history.
  void set_speculation(SpeculationOptions speculation);
  const SpeculationOptions& speculation() const { return speculation_; }
  const SpeculationCounters& counters() const { return counters_; }
  void reset_counters() { counters_ = {}; }

  const TokenDispatcher& dispatcher() const { return dispatcher_; }
  const std::optional<DispatchStats>& last_stats() const { return last_stats_; }
  // Rows sent to / received from each rank in the latest forward (empty before the first).
  const std::vector<int64_t>& last_send_splits() const { return last_send_splits_; }
  const std::vector<int64_t>& last_recv_splits() const { return last_recv_splits_; }

 private:
  TokenDispatcher dispatcher_;
  SpeculationOptions speculation_;
  CapacityPredictor predictor_;
  // The exchange prepare_routes started, consumed by the next run_routed.
  struct PreparedRoutes {
    comm::WorkHandle exchange;    // all_to_all_v of the predicted rows per peer
    at::Tensor send_R;            // [R] int64: predicted rows to each peer (tokens' device)
    at::Tensor host_2R;           // CUDA: [send_R, received], copied to pinned host memory
    std::optional<c10::Event> copied;  // CUDA: that copy's completion on the stream
  };
  std::optional<PreparedRoutes> prepared_;
  // The predicted counts (send, recv) of the latest dispatch, when it was prepared: with its
  // true counts (predictor_) they calibrate the next prediction.
  std::optional<PairCapacities> last_predicted_;
  PairCapacities take_prepared();
  SpeculationCounters counters_;
  std::optional<DispatchStats> last_stats_;
  std::vector<int64_t> last_send_splits_, last_recv_splits_;
};

}  // namespace switchyard::dispatch
