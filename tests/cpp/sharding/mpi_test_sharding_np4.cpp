// The sharding engine on 4 ranks: sharded equals unsharded with data parallelism only,
// with expert parallelism inside replicas (EP 2 x DP 2), accumulation and clipping.
#include "sharding_cases.h"
#include "../comm/comm_test_util.h"

namespace st = switchyard::sharding::testing;

TEST(ShardedEngine, ParityShardedFloat64) { st::run_parity({.accum = 2, .clip = 0.05}); }
TEST(ShardedEngine, ParityExpertParallel2x2Float64) { st::run_parity({.ep = 2, .accum = 2, .clip = 0.05}); }
TEST(ShardedEngine, ParityExpertParallel4Float64) { st::run_parity({.ep = 4, .tie = true}); }

int main(int argc, char** argv) { return switchyard::comm::testing::run_all_tests_on_every_rank(argc, argv); }
