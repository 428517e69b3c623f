// all_gather_strings: every rank's string, on every rank. For the rare collectives that move
// text rather than tensors -- a start-up check naming what differs between ranks, a
// checkpoint's per-rank file descriptions gathered into one index -- so each caller does not
// pad bytes into tensors by hand.
#pragma once

#include <string>
#include <vector>

#include "switchyard/comm/communicator.h"

namespace switchyard::comm {

// Collective over `group`: result[r] is rank r's `mine`. Two all_gathers (lengths, then the
// bytes padded to the longest), on the CPU.
std::vector<std::string> all_gather_strings(Communicator group, const std::string& mine);

}  // namespace switchyard::comm
