#include "switchyard/dispatch/expert_parallel.h"

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

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
  prepared_.reset();
  last_predicted_.reset();
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
  prepared_.reset();
  last_predicted_.reset();
}

// Note [Predicted capacities]
// Speculative capacity needs, for every pair (s -> r), a capacity both ends know without
// a message at dispatch time. From the previous step's counts both ends know it already
// (CapacityPredictor). From predicted routes only the sender knows its predicted rows, so
// prepare_routes -- called before the block's attention -- exchanges them: s sends r the
// number n'_sr of its tokens predicted to need r, and the pair's capacity is
// capacity_for(n'_sr, margin) on both ends. The exchange is a non-blocking all_to_all_v of
// R int64 per rank; nothing waits for it until run_routed, after the attention. On CUDA
// (NCCL) prepare_routes also orders a copy of the counts to pinned host memory right
// behind the exchange and records an event, so run_routed's host read waits for the
// exchange only, never for the attention queued after it: the host knows the capacities
// before the device has finished the attention. A prediction is only a size: the rows sent
// are the real routing's, and the second round carries what a wrong prediction left out,
// so results are bitwise those of the exact path (capacity_exchange.h).
//
// Calibration. Skipping the attention biases the prediction, and the bias of a pair
// persists from one step to the next (measured: uncalibrated predictions overflowed more
// often than the previous step's counts). When the previous dispatch was prepared too, the
// pair's prediction is scaled by that dispatch's true / predicted rows (or, when nothing was
// predicted, shifted by its true rows), and never lowered: the capacity is the larger of
// the prediction and its calibrated value, so an exact prediction still fits. Both ends
// hold the same three numbers -- this prediction and the last one, which travelled in the
// count exchanges, and the last true count -- and compute the same double expression, so
// they still agree without a message.

namespace {

// Note [Predicted capacities], calibration: `now` predicted rows, given that the previous
// dispatch predicted `before` and moved `actual`.
int64_t calibrated_rows(int64_t now, int64_t before, int64_t actual) {
  const int64_t scaled =
      before == 0 ? now + actual
                  : static_cast<int64_t>(std::llround(static_cast<double>(now) * static_cast<double>(actual) /
                                                      static_cast<double>(before)));
  return std::max(now, scaled);
}

}  // namespace

void ExpertParallel::prepare_routes(const at::Tensor& predicted_TK) {
  TORCH_CHECK_VALUE(wants_route_prediction(), "ExpertParallel.prepare_routes: speculative routing is off (",
                    speculation_.to_string(), ")");
  TORCH_CHECK_VALUE(predicted_TK.dim() == 2 && predicted_TK.scalar_type() == at::kLong,
                    "ExpertParallel.prepare_routes: expected predicted expert ids [T, K] int64, got ",
                    predicted_TK.sizes(), " ", predicted_TK.scalar_type());
  const at::NoGradGuard no_grad;
  const int64_t R = dispatcher_.placement().num_ranks();
  const DispatchPlan plan = dispatcher_.plan(predicted_TK, predicted_TK.lt(num_experts()));
  PreparedRoutes p;
  p.send_R = plan.counts_R2.select(1, 0).contiguous();
  const std::vector<int64_t> ones(R, 1);
  comm::Communicator group = dispatcher_.group();
  p.exchange = group.all_to_all_v_async(p.send_R, ones, ones);
  const c10::Device device = predicted_TK.device();
  if (!device.is_cpu()) {
    p.exchange->wait();  // NCCL: orders the current stream after the exchange; the host goes on
    p.host_2R = at::cat({p.send_R, p.exchange->result()}).to(at::kCPU, /*non_blocking=*/true);
    const c10::impl::VirtualGuardImpl guard(device.type());
    p.copied.emplace(device.type());
    p.copied->record(guard.getStream(device));
  }
  prepared_ = std::move(p);
  counters_.prediction_collectives += 1;
  counters_.bytes_moved += 8 * (R - 1);
}

PairCapacities ExpertParallel::take_prepared() {
  PreparedRoutes p = std::move(*prepared_);
  prepared_.reset();
  at::Tensor host;
  if (p.copied) {
    p.copied->synchronize();  // the counts' copy, queued before the attention
    host = p.host_2R;
  } else {
    p.exchange->wait();  // MPI: completes the non-blocking all_to_all_v
    host = at::cat({p.send_R, p.exchange->result()});
  }
  host = host.contiguous();
  const int64_t R = p.send_R.numel();
  const int64_t* n = host.data_ptr<int64_t>();
  PairCapacities predicted;
  predicted.send.assign(n, n + R);
  predicted.recv.assign(n + R, n + 2 * R);
  // Note [Predicted capacities], calibration: last_predicted_ and the history describe the
  // same (previous) dispatch, or last_predicted_ is empty.
  const std::optional<PairCapacities>& truth = predictor_.last_counts();
  const bool calibrate = last_predicted_.has_value() && truth.has_value();
  const double margin = speculation_.capacity_margin;
  PairCapacities c;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t send = calibrate ? calibrated_rows(predicted.send[r], last_predicted_->send[r], truth->send[r])
                                   : predicted.send[r];
    const int64_t recv = calibrate ? calibrated_rows(predicted.recv[r], last_predicted_->recv[r], truth->recv[r])
                                   : predicted.recv[r];
    c.send.push_back(CapacityPredictor::capacity_for(send, margin));
    c.recv.push_back(CapacityPredictor::capacity_for(recv, margin));
  }
  last_predicted_ = std::move(predicted);
  counters_.prediction_host_syncs += 1;
  return c;
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
  // Every rank of the group prepared this dispatch or none did (prepare_routes is collective),
  // and all share the same history, so all take the same path.
  std::optional<PairCapacities> capacities;
  const bool predicted = prepared_.has_value();
  if (predicted) {
    capacities = take_prepared();
  } else {
    last_predicted_.reset();  // this dispatch's counts will not match a prediction
    if (speculation_.capacity) capacities = predictor_.capacities(speculation_.capacity_margin);
  }
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
  c.route_predicted_dispatches += predicted;
  c.collectives += st.collectives + 1;  // + combine's all_to_all_v
  c.host_syncs += st.host_syncs;
  c.host_syncs_before_payload += st.host_syncs_before_payload;
  c.remote_rows_sent += st.remote_rows_sent;
  c.remote_slots_sent += st.remote_slots_sent;
  c.bytes_moved += st.bytes_moved + st.bytes_combine_sent;
  c.padding_bytes += st.padding_bytes;
  c.second_rounds += st.second_round;
  c.overflow_rows_sent += st.overflow_rows_sent;
  c.overflow_rows_received += st.overflow_rows_received;
  return dispatcher_.combine(*d.handle, out);
}

}  // namespace switchyard::dispatch
