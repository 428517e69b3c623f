// ProcessGroups: the communicators of one job, derived from the `parallel:` config. One
// object owns them (nothing global); model code receives the groups it needs.
//
// Note [Group layout]
// With W ranks, expert_parallel = EP and data_parallel = DP (resolved: 0 means W / EP),
// W must equal EP * DP: only expert and data parallelism exist. Rank r sits at
// (replica d = r / EP, expert shard e = r % EP):
//   expert_parallel       EP consecutive ranks {d*EP, ..., d*EP + EP-1}: together they hold
//                         one copy of all experts; the all-to-all-v of tokens runs here.
//   expert_data_parallel  DP ranks {e, e+EP, e+2*EP, ...}: replicas of the same experts; the
//                         experts' gradients are reduced here.
//   data_parallel         all W ranks: every rank holds the dense (non-expert) parameters,
//                         whose gradients are reduced over the whole job.
// Consecutive ranks share a host under mpirun's default by-slot mapping, so the
// all-to-all-v -- the heaviest, latency-bound traffic -- stays on the fastest links, and
// the gradient reductions cross hosts. docs/communication.md shows an example.
#pragma once

#include <cstdint>

#include "switchyard/comm/communicator.h"
#include "switchyard/config/config.h"

namespace switchyard::comm {

struct ProcessGroups {
  Communicator world;
  Communicator expert_parallel;
  Communicator expert_data_parallel;
  Communicator data_parallel;
  int64_t expert_parallel_size = 1;  // EP
  int64_t data_parallel_size = 1;    // DP, resolved

  // Collective over `world`. Validates the parallel section against world.size() (throws
  // switchyard::Error naming the key otherwise) and applies parallel.backend to the three
  // derived groups (`world` keeps its own choice: it is the caller's communicator).
  static ProcessGroups create(const config::Config& config, const Communicator& world);
};

}  // namespace switchyard::comm
