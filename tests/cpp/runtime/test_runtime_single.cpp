// The runtime as a plain process (no mpirun): an MPI singleton of size 1.
#include <gtest/gtest.h>

#include "switchyard/common/error.h"
#include "switchyard/runtime/runtime.h"

namespace sr = switchyard::runtime;

TEST(RuntimeSingle, ProcessInfoBeforeInitNamesTheFix) {
  if (sr::is_initialized()) GTEST_SKIP() << "already initialised by an earlier test";
  try {
    sr::process_info();
    FAIL() << "expected switchyard::Error";
  } catch (const switchyard::Error& e) {
    EXPECT_NE(std::string(e.what()).find("call switchyard::runtime::init()"), std::string::npos) << e.what();
  }
}

TEST(RuntimeSingle, PlainProcessIsRankZeroOfOne) {
  const auto& info = sr::init();
  EXPECT_EQ(info.rank, 0);
  EXPECT_EQ(info.world_size, 1);
  EXPECT_EQ(info.local_rank, 0);
  EXPECT_FALSE(info.hostname.empty());
  sr::finalize();
  EXPECT_FALSE(sr::is_initialized());
  sr::finalize();  // idempotent
}
