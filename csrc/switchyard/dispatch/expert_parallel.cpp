#include "switchyard/dispatch/expert_parallel.h"

#include <c10/util/Exception.h>

#include "switchyard/comm/agreement.h"
#include "switchyard/nn/experts.h"

namespace switchyard::dispatch {

ExpertParallel::ExpertParallel(comm::Communicator group, ExpertPlacement placement)
    : dispatcher_(std::move(group), std::move(placement)) {
  // Ranks with different maps would exchange mismatched counts and hang or corrupt rows.
  comm::check_same_fields(dispatcher_.group(), "the expert placement",
                          {{"expert placement", dispatcher_.placement().to_string()}});
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
  const DispatchResult d = dispatcher_.dispatch(x_Td, routing);
  const at::Tensor out = local_experts.forward(d.expert_rows, d.local_counts);
  last_stats_ = d.handle->stats;
  return dispatcher_.combine(*d.handle, out);
}

}  // namespace switchyard::dispatch
