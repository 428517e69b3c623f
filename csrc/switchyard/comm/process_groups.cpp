#include "switchyard/comm/process_groups.h"

#include "switchyard/comm/agreement.h"
#include "switchyard/common/error.h"

namespace switchyard::comm {

ProcessGroups ProcessGroups::create(const config::Config& config, const Communicator& world) {
  // Before anything sized from the config: a rank with another config fails here, named.
  check_same_config(world, config);
  const int W = world.size();
  const int64_t EP = config.parallel.expert_parallel;
  const int64_t DP = config::resolved_data_parallel(config, W);  // validates against W
  SWITCHYARD_CHECK(EP * DP == W, "parallel.expert_parallel (", EP, ") * parallel.data_parallel (", DP,
                   ") = ", EP * DP, " must equal the world size ", W,
                   ": only expert and data parallelism exist, so no other dimension can use the "
                   "remaining factor (", config.source_of("parallel.data_parallel"), ")");
  const int r = world.rank();
  const int replica = static_cast<int>(r / EP);
  const int shard = static_cast<int>(r % EP);
  // Note [Group layout]. Every rank makes the same three MPI_Comm_split calls in this order.
  Communicator ep = world.split(replica, shard, "expert_parallel");
  Communicator edp = world.split(shard, replica, "expert_data_parallel");
  Communicator dp = world.split(0, r, "data_parallel");
  const BackendChoice choice = parse_backend_choice(config.parallel.backend);
  for (Communicator* c : {&ep, &edp, &dp}) c->set_backend_choice(choice);
  return ProcessGroups{world, std::move(ep), std::move(edp), std::move(dp), EP, DP};
}

}  // namespace switchyard::comm
