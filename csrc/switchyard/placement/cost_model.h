// Projected time of one MoE layer's forward pass for a placement: the straggler's expert
// compute plus the all-to-all dispatch and combine (docs/placement.md, "Cost model").
//
//   compute   = max_r load(r) * flops_per_token / rank_flops
//   a2a(r)    = max(send(r), recv(r)), with (for the tokens rank r sends, resp. receives)
//               send(r) = alpha_intra * peers_intra + bytes_intra / beta_intra
//                       + alpha_inter * peers_inter + bytes_inter / beta_inter
//               (peers: ranks it exchanges at least one token with; bytes = tokens *
//               hidden_size * dtype_bytes; inter = the peer is on another node)
//   layer     = compute + 2 * max_r a2a(r)          (dispatch, then combine: the same
//                                                   volumes in the other direction)
// Every phase waits for its slowest rank, and nothing overlaps (an upper bound on a
// pipelined implementation). Links are full duplex, so a rank's send and receive overlap;
// intra- and inter-node transfers are serialised (one NIC/NVLink engine view, conservative).
#pragma once

#include <cstdint>
#include <vector>

namespace switchyard::placement {

struct CostModel {
  int64_t hidden_size = 4096;
  double dtype_bytes = 2.0;           // bf16 activations
  double flops_per_token = 0.0;       // FLOPs per routed token per expert (e.g. 6 * d * d_ff for SwiGLU)
  double rank_flops = 0.0;            // sustained FLOP/s of one rank
  double alpha_intra_s = 0.0;         // per-peer latency inside a node
  double beta_intra_Bps = 0.0;        // bytes/s per rank inside a node
  double alpha_inter_s = 0.0;         // per-peer latency across nodes
  double beta_inter_Bps = 0.0;        // bytes/s per rank across nodes
  int64_t ranks_per_node = 0;         // 0: every rank on one node

  // Throws c10::ValueError naming the field when a value is out of range.
  void validate() const;
};

struct LayerTime {
  double compute_s = 0.0;        // the straggler's expert compute
  double all_to_all_s = 0.0;     // one all-to-all (the slowest rank's max(send, recv))
  double total_s = 0.0;          // compute_s + 2 * all_to_all_s
  int64_t compute_rank = 0;      // the straggler
  int64_t all_to_all_rank = 0;   // the slowest rank of the all-to-all
  double max_send_bytes = 0.0;   // the largest per-rank volume sent off-rank (one direction)
};

// rank_load: [R] tokens each rank computes; rank_traffic: [R * R] row-major tokens sent from
// rank s to rank r (the diagonal is local and free). Throws c10::ValueError on shape errors.
LayerTime project_layer_time(const std::vector<double>& rank_load, const std::vector<double>& rank_traffic,
                             const CostModel& model);

}  // namespace switchyard::placement
