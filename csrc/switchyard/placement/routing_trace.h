// Routing trace files: a RoutingStatistics (normally reduced over the job) saved as a
// safetensors file, for offline placement decisions and for starting a run from another
// run's measured routing (docs/routing_trace.md).
//
//   tensors   layer<l>.tokens [E]  layer<l>.tokens_ema [E]  layer<l>.traffic [R,E]
//             layer<l>.coactivation [E,E]  layer<l>.transitions [E,E_next] (not the last)
//             -- all float64
//   metadata  "format": "switchyard.routing_trace"
//             "switchyard.routing_trace": JSON {format_version, num_layers,
//               experts_per_layer, num_ranks, ema_decay, steps, top_k, total_tokens,
//               transitions_skipped, model {d_model, moe_layer_names, routers},
//               created {unix_time, utc, host, world_size, note}}
//
// Loading checks every field and every tensor's shape and values (finite, >= 0); each error
// names the file and the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "switchyard/placement/routing_statistics.h"

namespace switchyard::placement {

inline constexpr int64_t kRoutingTraceFormatVersion = 1;

// What a trace says about where it came from (save fills the time and the host).
struct TraceCreation {
  int64_t unix_time = 0;
  std::string utc;   // ISO 8601
  std::string host;
  int64_t world_size = 0;  // ranks of the job that recorded it (0: unknown)
  std::string note;        // free text (e.g. the config path or run directory)
};

struct RoutingTrace {
  std::string path;
  int64_t format_version = kRoutingTraceFormatVersion;
  RoutingStatistics statistics;  // source_rank 0
  std::vector<double> total_tokens;  // per layer, as recorded in the metadata
  TraceCreation created;
};

// Writes `statistics` to `path` atomically (Note [Atomic checkpoint writes]). Local (no
// communication): reduce first, and let one rank write. The tensors are copied to the host.
void save_trace(const std::string& path, const RoutingStatistics& statistics,
                const TraceCreation& created = {});

// Reads and validates a trace; throws c10::ValueError naming the file and the field.
RoutingTrace load_trace(const std::string& path);

// Refuses (c10::ValueError) a trace recorded on a model of another shape: another number
// of MoE layers, another E in some layer, or another expert-parallel size.
void check_trace_matches(const RoutingTrace& trace, const std::vector<int64_t>& experts_per_layer,
                         int64_t num_ranks);

}  // namespace switchyard::placement
