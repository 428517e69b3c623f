// Speculation in the expert-parallel dispatcher: the options (config section
// `speculation:`), the per-layer prediction state and the counters that measure it.
// docs/speculation.md is the design and the measurements.
//
// Speculative capacity (Note [Speculative capacity] in capacity_exchange.h): a layer's
// next dispatch sizes each (sender, receiver) block from the rows that pair moved in the
// layer's previous dispatch, plus a margin. CapacityPredictor holds those counts. Both
// ends of a pair saw the same number (the sender sent it, the receiver received it), so
// both compute the same capacity without asking each other.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace switchyard::config {
struct Config;
}

namespace switchyard::dispatch {

struct SpeculationOptions {
  bool capacity = true;          // speculation.capacity
  double capacity_margin = 0.1;  // speculation.capacity_margin: room = c + ceil(margin * c)
  bool routes = true;            // speculation.routes: capacities from predicted routes (with capacity)

  // Throws c10::ValueError naming the field.
  void validate() const;
  // "capacity=true capacity_margin=0.1 routes=true": what ranks compare (they must agree).
  std::string to_string() const;
};

SpeculationOptions speculation_options_from_config(const config::Config& config);

// The rows this rank may send to each peer, and receive from each, in a speculative round.
// send[r] on rank s equals recv[s] on rank r.
struct PairCapacities {
  std::vector<int64_t> send;  // [R]
  std::vector<int64_t> recv;  // [R]
};

// One MoE layer's history: the true row counts of its latest dispatch.
class CapacityPredictor {
 public:
  // nullopt before the first dispatch (or after reset): the exact path runs.
  std::optional<PairCapacities> capacities(double margin) const;
  void observe(const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows);
  // Forget the history (a new expert placement makes the per-peer counts meaningless).
  void reset() { last_.reset(); }
  bool has_history() const { return last_.has_value(); }
  // The true counts of the latest dispatch (nullopt before the first).
  const std::optional<PairCapacities>& last_counts() const { return last_; }

  // capacity of a pair that moved `rows` last time.
  static int64_t capacity_for(int64_t rows, double margin);

 private:
  std::optional<PairCapacities> last_;  // true counts, not capacities
};

// Cumulative counters of one ExpertParallel (this rank), forward passes only: the backward
// exchanges are the same with and without speculation. "collectives" are the group-wide
// calls (all_to_all_v); a second round is a point-to-point exchange among the pairs whose
// rows overflowed, counted apart. Bytes are those this rank sends to other ranks, padding
// and headers included.
struct SpeculationCounters {
  int64_t dispatches = 0;              // forward passes (dispatch + combine)
  int64_t speculative_dispatches = 0;  // ... that took the capacity path
  int64_t collectives = 0;             // all_to_all_v calls, dispatch and combine
  int64_t host_syncs = 0;              // device-to-host reads of counts (SYNC_POINT)
  int64_t host_syncs_before_payload = 0;  // ... that the token rows had to wait for
  int64_t remote_rows_sent = 0;        // token rows sent to other ranks (one per (token, rank))
  int64_t remote_slots_sent = 0;       // ... and the routed slots they carry: slots - rows
                                       // is what deduplication saved (Note [Deduplication])
  int64_t bytes_moved = 0;             // remote bytes sent, dispatch and combine
  int64_t padding_bytes = 0;           // of which unused capacity and headers
  int64_t second_rounds = 0;           // dispatches in which this rank sent or received overflow
  int64_t overflow_rows_sent = 0;      // rows beyond a peer's capacity (sent in a second round)
  int64_t overflow_rows_received = 0;
  // Speculative routing: dispatches whose capacities came from predicted routes, and what
  // the prediction cost -- one count exchange started before the block's attention (not
  // counted in `collectives`) and one host read of its result (not in `host_syncs`), which
  // waits only for that exchange, never for the router or the attention.
  int64_t route_predicted_dispatches = 0;
  int64_t prediction_collectives = 0;
  int64_t prediction_host_syncs = 0;
};

}  // namespace switchyard::dispatch
