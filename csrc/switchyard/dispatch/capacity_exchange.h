// The speculative-capacity exchange of the dispatcher's step 3: token rows, their weights
// and their local expert ids sent to their ranks in one all_to_all_v sized from predicted
// counts, without exchanging the counts first. docs/speculation.md is the design page.
//
// Note [Speculative capacity]
// The exact path (token_dispatcher.h) exchanges the [R,2] counts, reads them on the host
// (SYNC_POINT(dispatch_counts)) and only then moves the rows: one latency-bound collective
// and, on GPUs, a device-to-host synchronisation stand between the router and the payload.
// Here every pair (s -> r) has a capacity c_sr that BOTH ends computed beforehand from the
// rows s sent r in this layer's previous dispatch (CapacityPredictor: the sender sent that
// count, the receiver received it, so the two agree without a message):
//   1. round 1  (one all_to_all_v) s sends r a block of 1 + c_sr rows: a header row with
//               the true counts (rows, slots) of the pair, then the first min(n_sr, c_sr)
//               token rows, zero padding after. Each row packs K local ids (int64), K
//               weights and the token, every part at an 8-byte boundary.
//      SYNC_POINT(capacity_counts): the host reads its own send counts and the received
//               headers (one copy, after the payload moved).
//   2. round 2  (Communicator::send_recv, only if needed) the rows beyond a capacity:
//               the sender knows n_sr > c_sr from its own counts, the receiver from the
//               header, so exactly the pairs concerned exchange them point-to-point; a
//               rank none of whose pairs overflowed does nothing. No global agreement.
//   3. unpack   the received rows in the exact path's order (source rank, then token):
//               each source's round-1 rows, then its overflow rows.
// The values are bit copies of what the exact path sends, so everything downstream is
// bitwise identical. One autograd node covers the exchange; its backward is the exact
// path's (the reverse all_to_all_v of the row and weight gradients with the true counts,
// then the index_add_ of the send gather), so gradients are bitwise identical too.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "switchyard/comm/communicator.h"
#include "switchyard/dispatch/speculation.h"
#include "switchyard/dispatch/token_dispatcher.h"

namespace switchyard::dispatch {

struct CapacityExchangeResult {
  at::Tensor recv_ids_MK;       // [M,K] int64 local expert ids (-1 unused)
  at::Tensor recv_x_Md;         // [M,d] differentiable w.r.t. x_Td
  at::Tensor recv_w_MK;         // [M,K] differentiable w.r.t. w_TK
  at::Tensor send_token_index;  // [N] token of each sent row, (rank, token) order
  at::Tensor send_rank;         // [N]
  std::vector<int64_t> send_rows, recv_rows, send_slots, recv_slots;  // [R] true counts
  int64_t collectives = 0;              // all_to_all_v calls (1)
  bool second_round = false;            // this rank sent or received overflow rows
  int64_t overflow_rows_sent = 0, overflow_rows_received = 0;
  int64_t bytes_sent = 0;               // to other ranks, both rounds, headers and padding included
  int64_t padding_bytes = 0;            // of which headers and unused capacity
};

// Collective over `group` (round 1); round 2 is point-to-point between the pairs that
// overflowed. capacities.send[r] on rank s must equal capacities.recv[s] on rank r.
CapacityExchangeResult capacity_exchange(const comm::Communicator& group, const DispatchPlan& plan,
                                         const at::Tensor& x_Td, const at::Tensor& w_TK,
                                         const PairCapacities& capacities);

}  // namespace switchyard::dispatch
