// check_same_config: at start-up, every rank of a group compares the config's model, moe
// and parallel sections and the expert placement (comm/agreement.h). When they differ,
// every rank throws switchyard::Error with the same message, naming each rank that differs
// from rank 0 and the differing keys with both values -- the job then ends through the
// usual fatal path (runtime.h, Note [One way to die]) instead of hanging later in a
// mismatched all-to-all. ProcessGroups::create and ExpertParallel already run the two
// halves of this check; call it directly when building groups by hand.
#pragma once

#include "switchyard/comm/communicator.h"
#include "switchyard/config/config.h"
#include "switchyard/dispatch/expert_placement.h"

namespace switchyard::dispatch {

// Collective over `group`. placement may be null (then only the config is compared).
void check_same_config(comm::Communicator group, const config::Config& config,
                       const ExpertPlacement* placement = nullptr);

}  // namespace switchyard::dispatch
