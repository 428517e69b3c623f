#include "switchyard/dispatch/config_check.h"

#include "switchyard/comm/agreement.h"

namespace switchyard::dispatch {

void check_same_config(comm::Communicator group, const config::Config& config,
                       const ExpertPlacement* placement) {
  comm::check_same_config(group, config,
                          {{"expert placement", placement ? placement->to_string() : "none"}});
}

}  // namespace switchyard::dispatch
