#include "switchyard/dispatch/expert_parallel.h"

#include <c10/util/Exception.h>

#include "switchyard/comm/agreement.h"
#include "switchyard/nn/experts.h"

namespace switchyard::dispatch {

ExpertParallel::ExpertParallel(comm::Communicator group, ExpertPlacement placement,
                               SpeculationOptions speculation)
    : dispatcher_(std::move(group), std::move(placement)), speculation_(speculation) {
  speculation_.validate();
  // Ranks with different maps would exchange mismatched counts and hang or corrupt rows;
  // ranks with different speculation would size one pair's blocks differently.
  comm::check_same_fields(dispatcher_.group(), "the expert placement",
                          {{"expert placement", dispatcher_.placement().to_string()},
                           {"speculation", speculation_.to_string()}});
}

void ExpertParallel::set_speculation(SpeculationOptions speculation) {
  speculation.validate();
  comm::check_same_fields(dispatcher_.group(), "the speculation options",
                          {{"speculation", speculation.to_string()}});
  speculation_ = speculation;
  predictor_.reset();
}

void ExpertParallel::set_placement(ExpertPlacement placement) {
  const ExpertPlacement& now = dispatcher_.placement();
  TORCH_CHECK_VALUE(placement.num_experts() == now.num_experts() && placement.num_ranks() == now.num_ranks(),
                    "ExpertParallel.set_placement: the new placement has ", placement.num_experts(),
                    " experts on ", placement.num_ranks(), " ranks but the layer has ", now.num_experts(),
                    " on ", now.num_ranks());
  comm::check_same_fields(dispatcher_.group(), "the new expert placement",
                          {{"expert placement", placement.to_string()}});
  dispatcher_ = TokenDispatcher(dispatcher_.group(), std::move(placement));
  predictor_.reset();
}

std::vector<int64_t> ExpertParallel::local_experts() const {
  return dispatcher_.placement().local_experts(dispatcher_.group().rank());
}

at::Tensor ExpertParallel::run_routed(const at::Tensor& x_Td, const ops::Routing& routing,
                                      nn::GroupedExpertsImpl& local_experts) {
  const int64_t L = static_cast<int64_t>(this->local_experts().size());
  TORCH_CHECK_VALUE(local_experts.num_experts() == L, "ExpertParallel: this rank holds ", L,
                    " experts but the layer's local GroupedExperts has ",
                    local_experts.num_experts(), "; call enable_expert_parallel on the layer");
  std::optional<PairCapacities> capacities;
  if (speculation_.capacity) capacities = predictor_.capacities(speculation_.capacity_margin);
  const DispatchResult d = dispatcher_.dispatch(x_Td, routing, capacities ? &*capacities : nullptr);
  // Every rank observes the same exchange, so the pair's two ends keep the same history.
  if (speculation_.capacity) predictor_.observe(d.handle->send_splits, d.handle->recv_splits);
  const at::Tensor out = local_experts.forward(d.expert_rows, d.local_counts);
  const DispatchStats& st = d.handle->stats;
  last_stats_ = st;
  last_send_splits_ = d.handle->send_splits;
  last_recv_splits_ = d.handle->recv_splits;
  SpeculationCounters& c = counters_;
  c.dispatches += 1;
  c.speculative_dispatches += st.speculative;
  c.collectives += st.collectives + 1;  // + combine's all_to_all_v
  c.host_syncs += st.host_syncs;
  c.host_syncs_before_payload += st.host_syncs_before_payload;
  c.bytes_moved += st.bytes_moved + st.bytes_combine_sent;
  c.padding_bytes += st.padding_bytes;
  c.second_rounds += st.second_round;
  c.overflow_rows_sent += st.overflow_rows_sent;
  c.overflow_rows_received += st.overflow_rows_received;
  return dispatcher_.combine(*d.handle, out);
}

}  // namespace switchyard::dispatch
