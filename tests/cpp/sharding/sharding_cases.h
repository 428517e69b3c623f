// The sharding engine's multi-rank test cases, shared by mpi_test_sharding.cpp (2 ranks)
// and mpi_test_sharding_np4.cpp (4 ranks): every case reads the world size and checks
// against the single-process reference of sharding_test_util.h.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cmath>

#include "sharding_test_util.h"
#include "switchyard/comm/communicator.h"
#include "switchyard/common/error.h"
#include "switchyard/runtime/runtime.h"

namespace switchyard::sharding::testing {

inline comm::Communicator& world() {
  static comm::Communicator w = comm::Communicator::world();
  return w;
}

// A world of one per rank (for the R = 1 case inside a multi-rank job).
inline comm::Communicator& self_world() {
  static comm::Communicator w = world().split(world().rank(), 0, "self");
  return w;
}

struct ParityCase {
  int64_t ep = 1;
  bool shard = true;
  int64_t accum = 1;
  double clip = 0;
  bool prefetch = true;
  bool tie = false;
  at::ScalarType dtype = at::kDouble;
  bool single = false;  // R = 1: every rank trains alone on its own world of one
};

// 5 steps of the engine against the reference; losses, gradient norms and final parameters.
inline void run_parity(const ParityCase& pc) {
  Setup s;
  s.tie = pc.tie;
  s.dtype = pc.dtype;
  const bool fp64 = pc.dtype == at::kDouble;
  config::Config c = make_config(pc.ep, pc.shard, pc.accum, pc.clip, fp64 ? "fp64" : "fp32");
  c.parallel.prefetch = pc.prefetch;
  comm::Communicator& w = pc.single ? self_world() : world();
  const int64_t W = w.size();
  ToyMoEStack model = make_model(s);
  auto engine = ShardedEngine::from_config(model.ptr(), c, w);
  Reference ref = make_reference(s, c);
  const double rtol = fp64 ? 1e-9 : 2e-4, atol = fp64 ? 1e-11 : 2e-5;
  bool any_clipped = false;
  for (int64_t step = 0; step < 5; ++step) {
    const double lr = 1e-2 * (1.0 + 0.5 * step);
    std::vector<nn::UnitBatch> mbs;
    for (int64_t a = 0; a < pc.accum; ++a) mbs.push_back(make_batch(s, step, w.rank(), a));
    const StepResult r = engine->step(mbs, lr);
    reference_step(ref, s, c, W, step, lr);
    EXPECT_NEAR(r.loss, ref.losses.back(), 1e-10 + rtol * std::abs(ref.losses.back())) << "step " << step;
    EXPECT_NEAR(r.aux_loss, ref.aux_losses.back(), 1e-10 + rtol * std::abs(ref.aux_losses.back())) << "step " << step;
    EXPECT_NEAR(r.grad_norm, ref.grad_norms.back(), 1e-10 + rtol * ref.grad_norms.back()) << "step " << step;
    EXPECT_FALSE(r.skipped);
    any_clipped = any_clipped || r.clipped;
  }
  if (pc.clip > 0) EXPECT_TRUE(any_clipped) << "the clipping threshold never bit; lower it";
  expect_same_parameters(*engine, model, ref, rtol, atol);
}

}  // namespace switchyard::sharding::testing
