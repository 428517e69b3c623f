// Runs under `mpirun -np 2` (see tests/cpp/CMakeLists.txt): the runtime reports a
// consistent view of the job on every rank.
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "switchyard/runtime/runtime.h"

namespace sr = switchyard::runtime;

TEST(Runtime, EveryRankSeesTheSameJob) {
  const auto& info = sr::process_info();
  EXPECT_EQ(info.world_size, 2);
  EXPECT_TRUE(info.launched_by_mpirun);
  EXPECT_GE(info.rank, 0);
  EXPECT_LT(info.rank, info.world_size);
  EXPECT_LT(info.local_rank, info.local_size);

  // All ranks run on this one machine: ranks are distinct and local ranks equal ranks.
  std::vector<int> ranks(info.world_size);
  MPI_Allgather(&info.rank, 1, MPI_INT, ranks.data(), 1, MPI_INT, MPI_COMM_WORLD);
  for (int r = 0; r < info.world_size; ++r) EXPECT_EQ(ranks[r], r);
  EXPECT_EQ(info.local_rank, info.rank);
  EXPECT_EQ(info.local_size, info.world_size);
}

TEST(Runtime, InitIsIdempotent) {
  const auto& a = sr::init();
  const auto& b = sr::init();
  EXPECT_EQ(&a, &b);
  EXPECT_TRUE(sr::is_initialized());
  EXPECT_NE(sr::rank_tag().find("rank " + std::to_string(a.rank) + "/2"), std::string::npos);
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  sr::init();
  const int failed = RUN_ALL_TESTS();
  // A failure on any rank fails the job on every rank, so mpirun's exit code reflects it.
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  sr::finalize();
  return any_failed;
}
