// Start-up agreement checks: every rank of a group must hold the same configuration, or
// the job would hang later in a mismatched collective (an all-to-all sized from a different
// expert count, a gather of a different hidden size). These checks compare a hash first
// (one tiny all_gather) and, only on a mismatch, every rank's fields, so the error names
// each rank that differs from rank 0, the fields and both values. Every rank throws the same
// switchyard::Error; the job then ends through the fatal path (runtime.h, Note [One way to
// die]).
//
// Called automatically: ProcessGroups::create checks the config's model, moe and parallel
// sections over the world; dispatch::ExpertParallel checks the expert placement over its
// expert-parallel group.
#pragma once

#include <map>
#include <string>

#include "switchyard/comm/communicator.h"
#include "switchyard/config/config.h"

namespace switchyard::comm {

// Collective over `group` (a Communicator is a cheap handle: by value). `what` names the fields in the message ("the configuration").
void check_same_fields(Communicator group, const std::string& what,
                       const std::map<std::string, std::string>& fields);

// The model, moe and parallel keys of `config` ("section.key" -> value), as compared by
// check_same_config.
std::map<std::string, std::string> fingerprinted_fields(const config::Config& config);

// check_same_fields over fingerprinted_fields(config) plus `extra` fields.
void check_same_config(Communicator group, const config::Config& config,
                       const std::map<std::string, std::string>& extra = {});

}  // namespace switchyard::comm
