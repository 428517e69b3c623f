// ExpertParallelism: how an MoELayer runs its routed experts when they are spread over
// several ranks. The layer knows nothing of communication: it hands its tokens, their
// routing (global expert ids) and its local GroupedExperts to this interface and gets the
// routed output back, weights applied. switchyard::dispatch::ExpertParallel implements it
// with the all-to-all TokenDispatcher (docs/dispatch.md); without one, the layer runs
// every expert locally (permute -> experts -> unpermute).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace switchyard::ops {
struct Routing;
}

namespace switchyard::nn {

class GroupedExpertsImpl;

class ExpertParallelism {
 public:
  virtual ~ExpertParallelism() = default;

  // Routed experts of the whole layer (E) and the global ids this rank holds, ascending:
  // row i of the local GroupedExperts weights is expert local_experts()[i].
  virtual int64_t num_experts() const = 0;
  virtual std::vector<int64_t> local_experts() const = 0;

  // x_Td [T,d] this rank's tokens, `routing` their routing over global expert ids (top-k form;
  // expert choice via ops::expert_choice_as_routing)
  // (kept slots in the grouped arrays; null / zero-computation / dropped slots never run),
  // local_experts the rank's experts. -> [T,d]: sum over each token's kept routed slots of
  // weight * expert(x). Collective over the expert-parallel group; differentiable w.r.t.
  // x_Td, the routing's topk_weights and the experts' weights.
  virtual at::Tensor run_routed(const at::Tensor& x_Td, const ops::Routing& routing,
                                GroupedExpertsImpl& local_experts) = 0;

  // Speculative routing (docs/speculation.md): when wants_route_prediction(), the layer
  // predicts the routes of its next run_routed before the block's attention runs and hands
  // them to prepare_routes -- predicted_TK [T,K] global expert ids (ids >= num_experts():
  // not routed), for the same T tokens. An implementation may start communication for that
  // run_routed; a wrong prediction must not change its result. Collective over the group when
  // wanted: every rank calls it once before the run_routed it prepares.
  virtual bool wants_route_prediction() const { return false; }
  virtual void prepare_routes(const at::Tensor& /*predicted_TK*/) {}
};

}  // namespace switchyard::nn
