// TokenDispatcher: moves each rank's routed tokens to the ranks that hold their experts
// and brings the experts' outputs back, over the expert-parallel group. docs/dispatch.md
// is the design page.
//
//   dispatch(x_Td, routing[, capacities])
//     1. plan      (local)   one send row per (token, destination rank) holding at least
//                            one of the token's kept experts; rows ordered by (rank,
//                            token). Each row carries a [K] vector of destination-local
//                            expert ids (-1 unused) and a [K] vector of weights.
//     2. counts    (comm)    rows and slots per peer, exchanged with an all_to_all_v.
//                            SYNC_POINT(dispatch_counts): the host reads them to size the
//                            transfers -- the only host/device synchronisation.
//     3. exchange  (comm)    all_to_all_v of the local ids, and (one autograd node) of the
//                            token rows and their weights.
//     4. regroup   (local)   expand each received row to its slots, stable-sorted by local
//                            expert: contiguous blocks + counts for GroupedExperts.
//   combine(handle, expert_rows)
//     5. reduce    (local)   weighted sum of each received row's slots (unpermute_tokens):
//                            one partial row per (token, rank) again.
//     6. exchange  (comm)    reverse all_to_all_v of the partial rows.
//     7. sum       (local)   y[t] = sum of t's partial rows in ascending rank order.
//
// With `capacities` (speculative capacity, Note [Speculative capacity] in
// capacity_exchange.h), steps 2 and 3 become one all_to_all_v of packed rows sized from
// the predicted counts, with the true counts in a header, plus a point-to-point second
// round only for the pairs whose prediction fell short. The result is bitwise the same.
//
// Note [Deduplication]
// A token with several experts on one rank travels there once, in both directions: the
// receiving rank expands it locally and reduces its experts' outputs before sending back.
// DispatchStats reports the bytes moved and the bytes a one-row-per-slot exchange would
// have moved.
//
// dispatch returns an immutable DispatchHandle that combine consumes: the dispatcher keeps
// no state between the two, so several micro-batches may be in flight. Every method is
// collective over the group (Note [Who may call] in communicator.h) and differentiable
// w.r.t. x, the routing weights and the expert outputs (all_to_all_autograd.h).
//
// Shape legend: T tokens of this rank, K top-k, d hidden, R ranks, N rows sent (one per
// (token, rank)), M rows received, S slots received, L local experts.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "switchyard/comm/communicator.h"
#include "switchyard/dispatch/expert_placement.h"
#include "switchyard/dispatch/speculation.h"

namespace switchyard::ops {
struct Routing;
}

namespace switchyard::dispatch {

// What one dispatch moved (host integers). "rows" are token rows (one per (token, rank));
// "slots" are kept routed (token, expert) pairs: the rows an exchange without
// deduplication would send. Bytes count the token rows plus their metadata (dispatch:
// K local ids + K weights per row, or one id + one weight per slot without dedup).
struct DispatchStats {
  int64_t rows_sent = 0, slots_sent = 0;            // to every rank, self included
  int64_t remote_rows_sent = 0, remote_slots_sent = 0;  // to other ranks only
  int64_t rows_received = 0, slots_received = 0;
  int64_t bytes_dispatched = 0, bytes_dispatched_without_dedup = 0;  // remote only
  int64_t bytes_combined = 0, bytes_combined_without_dedup = 0;      // remote only
  // What the exchange cost (docs/speculation.md). Collectives: all_to_all_v calls of the
  // dispatch (exact path: counts, ids, rows, weights = 4; speculative: 1); host_syncs: the
  // host reads of counts (1 either way), of which before the payload moved (exact: 1,
  // speculative: 0). bytes_moved: remote bytes this rank sent in the dispatch -- counts,
  // headers, padding and overflow included; padding_bytes: headers and unused capacity.
  // bytes_combine_sent: remote bytes this rank sends back in combine.
  int64_t collectives = 0, host_syncs = 0, host_syncs_before_payload = 0;
  int64_t bytes_moved = 0, padding_bytes = 0, bytes_combine_sent = 0;
  int64_t speculative = 0;    // 1 when the capacity path ran
  int64_t second_round = 0;   // 1 when this rank sent or received overflow rows
  int64_t overflow_rows_sent = 0, overflow_rows_received = 0;
};

// Step 1's result: the send plan of this rank, on the tokens' device.
struct DispatchPlan {
  at::Tensor present_TR;    // [T,R] bool: token t has a kept expert on rank r
  at::Tensor dest_TK;       // [T,K] int64: rank of each slot's expert, R when not kept
  at::Tensor local_id_TK;   // [T,K] int64: the expert's local index on its rank (-1: not kept)
  at::Tensor counts_R2;     // [R,2] int64: rows and slots for each destination
};

// Everything combine needs; immutable once dispatch returns it.
struct DispatchHandle {
  std::vector<int64_t> send_splits;  // [R] rows to each rank
  std::vector<int64_t> recv_splits;  // [R] rows from each rank
  int64_t num_tokens = 0;            // T
  int64_t num_local_experts = 0;     // L
  at::Tensor send_token_index;       // [N] token of each sent row (rank-major order)
  at::Tensor send_rank;              // [N] its destination rank
  at::Tensor slot_row;               // [S] received row of each grouped slot
  at::Tensor slot_expert;            // [S] its local expert (ascending: grouped)
  at::Tensor slot_weight;            // [S] its weight (differentiable)
  at::Tensor local_counts;           // [L] int64 slots per local expert
  DispatchStats stats;
};

struct DispatchResult {
  std::shared_ptr<const DispatchHandle> handle;
  at::Tensor expert_rows;   // [S,d] grouped by local expert (GroupedExperts' input)
  at::Tensor local_counts;  // [L] int64 on the rows' device
};

class TokenDispatcher {
 public:
  // placement.num_ranks() must equal group.size().
  TokenDispatcher(comm::Communicator group, ExpertPlacement placement);

  // x_Td [T,d]; routing from route_topk over this layer's logits: topk_experts [T,K] global
  // ids (ids >= E -- null / zero-computation experts -- never travel), topk_weights [T,K];
  // its grouped arrays say which slots were kept (capacity drops never travel).
  // capacities (optional): speculative capacity per pair; every rank of the group must
  // pass them or none, with send[r] on rank s equal to recv[s] on rank r.
  DispatchResult dispatch(const at::Tensor& x_Td, const ops::Routing& routing,
                          const PairCapacities* capacities = nullptr) const;

  // expert_rows_Sd: the experts' output for dispatch's expert_rows -> y [T,d].
  at::Tensor combine(const DispatchHandle& handle, const at::Tensor& expert_rows_Sd) const;

  // The steps, for callers that overlap them with other work.
  // kept_TK [T,K] bool: the slots that run a routed expert.
  DispatchPlan plan(const at::Tensor& topk_experts_TK, const at::Tensor& kept_TK) const;
  // Step 2; the host reads the counts here: SYNC_POINT(dispatch_counts).
  void exchange_counts(const DispatchPlan& plan, std::vector<int64_t>& send_rows,
                       std::vector<int64_t>& recv_rows, std::vector<int64_t>& send_slots,
                       std::vector<int64_t>& recv_slots) const;

  const ExpertPlacement& placement() const { return placement_; }
  const comm::Communicator& group() const { return group_; }

 private:
  comm::Communicator group_;
  ExpertPlacement placement_;
};

// kept_TK [T,K] bool from a Routing's grouped arrays (slot_index where expert_index >= 0).
at::Tensor kept_slots(const ops::Routing& routing);

}  // namespace switchyard::dispatch
