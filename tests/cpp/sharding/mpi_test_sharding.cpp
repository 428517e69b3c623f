// The sharding engine on 2 ranks (and on worlds of one): sharded equals unsharded, memory,
// clipping with one rank's huge gradient, bad input, shard state round trip.
#include "sharding_cases.h"
#include "../comm/comm_test_util.h"

namespace st = switchyard::sharding::testing;
using switchyard::sharding::ShardedEngine;
using switchyard::sharding::StepResult;

TEST(ShardedEngine, ParityOneRankFloat64) { st::run_parity({.single = true}); }
TEST(ShardedEngine, ParityShardedFloat64) { st::run_parity({}); }
TEST(ShardedEngine, ParityExpertParallelAccumClipFloat64) {
  st::run_parity({.ep = 2, .accum = 2, .clip = 0.05});
}
TEST(ShardedEngine, ParityReplicatedNoPrefetchTiedFloat64) {
  st::run_parity({.shard = false, .prefetch = false, .tie = true});
}
TEST(ShardedEngine, ParityShardedTiedFloat64) { st::run_parity({.ep = 2, .tie = true}); }
TEST(ShardedEngine, ParityFloat32) { st::run_parity({.ep = 2, .accum = 2, .clip = 0.05, .dtype = at::kFloat}); }

// Dense bytes per rank: persistent state is 1/R of the unsharded state (plus padding); at
// any moment at most one unit (two with prefetch) is gathered; the CountingAllocator, which
// saw every allocation the engine made for dense state, agrees.
TEST(ShardedEngine, MemoryShrinksWithRanks) {
  for (bool prefetch : {false, true}) {
    st::Setup s;
    s.dtype = at::kFloat;
    s.d_model = 16;
    s.vocab = 64;
    auto c = st::make_config(1, true, 1, 1.0, "fp32");
    c.parallel.prefetch = prefetch;
    auto model = st::make_model(s);
    auto engine = ShardedEngine::from_config(model.ptr(), c, st::world());
    const int64_t R = st::world().size();
    auto before = engine->memory_report();
    const StepResult r = engine->step({st::make_batch(s, 0, st::world().rank(), 0)}, 1e-3);
    const auto m = engine->memory_report();
    const int64_t padding_bytes = 16 * static_cast<int64_t>(engine->flat_units().size()) * R;
    EXPECT_LE(m.persistent_dense_bytes, m.unsharded_dense_bytes / R + padding_bytes);
    EXPECT_GE(m.persistent_dense_bytes, m.unsharded_dense_bytes / R);
    // Nothing gathered between steps; the allocator holds exactly the persistent state.
    EXPECT_EQ(before.allocator_current_bytes, m.persistent_dense_bytes);
    EXPECT_EQ(m.allocator_current_bytes, m.persistent_dense_bytes);
    EXPECT_EQ(r.max_units_gathered, prefetch ? 2 : 1);
    // Between steps the sharded parameters are empty tensors, not views of freed memory.
    EXPECT_EQ(model->embed->weight.numel(), 0);
    EXPECT_EQ(model->head->weight.numel(), 0);
    const int64_t units_at_once = prefetch ? 2 : 1;
    EXPECT_LE(m.peak_transient_bytes, units_at_once * m.largest_unit_bytes);
    // The allocator's peak: the persistent state + the transient peak + the small shard-sized
    // reduce-scatter outputs (at most two alive at once).
    int64_t largest_shard = 0;
    for (auto& f : engine->flat_units()) largest_shard = std::max(largest_shard, f.shard_numel() * 4);
    EXPECT_LE(m.allocator_peak_bytes, m.persistent_dense_bytes + m.peak_transient_bytes + 2 * largest_shard);
    EXPECT_GE(m.allocator_peak_bytes, m.persistent_dense_bytes + m.peak_transient_bytes);
    EXPECT_LE(m.allocator_peak_bytes,
              m.unsharded_dense_bytes / R + padding_bytes + units_at_once * m.largest_unit_bytes + 2 * largest_shard);
    if (st::world().rank() == 0) {
      std::printf("[memory] R=%lld prefetch=%d persistent=%lld unsharded=%lld largest_unit=%lld "
                  "peak_transient=%lld allocator_peak=%lld\n",
                  static_cast<long long>(R), prefetch, static_cast<long long>(m.persistent_dense_bytes),
                  static_cast<long long>(m.unsharded_dense_bytes), static_cast<long long>(m.largest_unit_bytes),
                  static_cast<long long>(m.peak_transient_bytes), static_cast<long long>(m.allocator_peak_bytes));
    }
  }
}

// Only rank 1's shard of one unit holds a huge gradient: every rank computes the same global
// norm and clip coefficient, and the result equals the reference given the same gradient.
TEST(ShardedEngine, OneRanksHugeGradientClipsEveryRank) {
  st::Setup s;
  auto c = st::make_config(1, true, 1, 1.0);
  auto model = st::make_model(s);
  auto engine = ShardedEngine::from_config(model.ptr(), c, st::world());
  st::Reference ref = st::make_reference(s, c);
  const int64_t W = st::world().size();
  // The embedding unit: rank 1's shard starts inside its one parameter.
  auto& flat = engine->flat_units().front();
  ASSERT_EQ(flat.params().front().name, "embed.weight");
  const int64_t global_index = flat.padded_numel() / W;  // rank 1's first element
  ASSERT_LT(global_index, flat.numel());
  const double huge = 1e4;
  engine->forward_backward(st::make_batch(s, 0, st::world().rank(), 0));
  if (st::world().rank() == 1) {
    // The engine's shard holds the summed (not yet averaged) gradient: average-equivalent
    // injection is huge * W * A.
    flat.grad_shard()[0] += huge * W;
  }
  const StepResult r = engine->apply_step(1e-2);
  at::Tensor inject = at::zeros({s.vocab, s.d_model}, at::kDouble);
  inject.view(-1)[global_index] = huge;
  st::reference_step(ref, s, c, W, 0, 1e-2, {{"embed.weight", inject}});
  EXPECT_TRUE(r.clipped);
  EXPECT_GT(r.grad_norm, huge * 0.99);
  EXPECT_NEAR(r.grad_norm, ref.grad_norms.back(), 1e-9 * ref.grad_norms.back());
  const at::Tensor mine = at::tensor({r.grad_norm, r.clip_coef}, at::kDouble);
  const at::Tensor all = st::world().all_gather(mine.view({1, 2}));
  for (int64_t p = 1; p < W; ++p) EXPECT_TRUE(at::equal(all[p], all[0])) << "rank " << p << " clipped differently";
  st::expect_same_parameters(*engine, model, ref, 1e-9, 1e-11);
}

TEST(ShardedEngine, ParameterSetDiffersAcrossRanks) {
  st::Setup s;
  if (st::world().rank() == 1) s.mlp_hidden = 10;
  auto model = st::make_model(s);
  switchyard::comm::testing::expect_error(
      [&] { ShardedEngine::from_config(model.ptr(), st::make_config(1, true, 1, 0), st::world()); },
      {"parameter set differs across ranks", "rank 0 has '  blocks.0.gate_proj.weight [12, 8]",
       "rank 1 has '  blocks.0.gate_proj.weight [10, 8]"});
}

TEST(ShardedEngine, WorldSizeTheParallelSizesDoNotDivide) {
  st::Setup s;
  auto model = st::make_model(s);
  const int64_t W = st::world().size();
  try {
    auto c = st::make_config(1, true, 1, 0);
    c.parallel.data_parallel = W + 1;
    ShardedEngine::from_config(model.ptr(), c, st::world());
    ADD_FAILURE() << "expected an error";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("parallel.data_parallel"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(W + 1)), std::string::npos) << msg;
    EXPECT_NE(msg.find("world size " + std::to_string(W)), std::string::npos) << msg;
  }
}

TEST(ShardedEngine, NotAUnitSequence) {
  auto layer = switchyard::nn::MoELayer(switchyard::nn::MoELayerOptions{});
  try {
    ShardedEngine::from_config(layer.ptr(), st::make_config(1, true, 1, 0), st::world());
    ADD_FAILURE() << "expected a TypeError";
  } catch (const c10::TypeError& e) {
    EXPECT_NE(std::string(e.what()).find("does not implement switchyard::nn::UnitSequence"), std::string::npos);
  }
}

// A shard saved after 2 steps and restored reproduces the third step exactly.
TEST(ShardedEngine, ShardStateRoundTrip) {
  st::Setup s;
  auto c = st::make_config(2, true, 1, 1.0);
  auto model = st::make_model(s);
  auto engine = ShardedEngine::from_config(model.ptr(), c, st::world());
  const int r = st::world().rank();
  for (int64_t step = 0; step < 2; ++step) engine->step({st::make_batch(s, step, r, 0)}, 1e-2);
  const auto saved = engine->shard_state_dict();
  const StepResult first = engine->step({st::make_batch(s, 2, r, 0)}, 1e-2);
  const auto after = engine->shard_state_dict();
  engine->load_shard_state_dict(saved);
  EXPECT_EQ(engine->optimizer_step(), 2);
  const StepResult again = engine->step({st::make_batch(s, 2, r, 0)}, 1e-2);
  EXPECT_EQ(first.loss, again.loss);
  for (const auto& [k, v] : engine->shard_state_dict()) EXPECT_TRUE(at::equal(v, after.at(k))) << k;
  // A shard of another layout is refused, naming the key.
  auto bad = saved;
  bad.begin()->second = at::zeros({3});
  switchyard::comm::testing::expect_error([&] { engine->load_shard_state_dict(bad); }, {bad.begin()->first});
}

// bf16 compute, float32 masters: parameters are gathered in bf16, the update happens in
// float32; losses follow the float32 reference to bf16 accuracy.
TEST(ShardedEngine, Bfloat16ComputeFloat32Masters) {
  st::Setup s;
  s.dtype = at::kFloat;
  auto c = st::make_config(2, true, 1, 1.0, "bf16");
  auto model = st::make_model(s);
  auto engine = ShardedEngine::from_config(model.ptr(), c, st::world());
  st::Reference ref = st::make_reference(s, st::make_config(2, true, 1, 1.0, "fp32"));
  for (int64_t step = 0; step < 3; ++step) {
    const StepResult r = engine->step({st::make_batch(s, step, st::world().rank(), 0)}, 1e-2);
    st::reference_step(ref, s, c, st::world().size(), step, 1e-2);
    EXPECT_NEAR(r.loss, ref.losses.back(), 3e-2 * ref.losses.back()) << "step " << step;
  }
  EXPECT_EQ(model->embed->weight.scalar_type(), at::kBFloat16);
  EXPECT_EQ(engine->shard_state_dict().at("embed.flat.param").scalar_type(), at::kFloat);
}

// fp16 with dynamic loss scaling: an overflow on one rank skips the step on every rank and
// halves the scale; the next clean step updates.
TEST(ShardedEngine, Float16OverflowSkipsEveryRankAndHalvesTheScale) {
  st::Setup s;
  s.dtype = at::kFloat;
  auto c = st::make_config(1, true, 1, 1.0, "fp16");
  auto model = st::make_model(s);
  auto engine = ShardedEngine::from_config(model.ptr(), c, st::world());
  const double scale = engine->loss_scale();
  EXPECT_EQ(scale, 65536.0);
  const auto before = engine->gather_dense_parameters();
  engine->forward_backward(st::make_batch(s, 0, st::world().rank(), 0));
  if (st::world().rank() == 1) engine->flat_units().back().grad_shard()[0] = INFINITY;
  const StepResult r = engine->apply_step(1e-2);
  EXPECT_TRUE(r.skipped);
  EXPECT_EQ(engine->loss_scale(), scale / 2);
  EXPECT_EQ(engine->optimizer_step(), 0);
  for (const auto& [name, value] : engine->gather_dense_parameters()) EXPECT_TRUE(at::equal(value, before.at(name))) << name;
  const StepResult ok = engine->step({st::make_batch(s, 1, st::world().rank(), 0)}, 1e-2);
  EXPECT_FALSE(ok.skipped);
  EXPECT_TRUE(std::isfinite(ok.loss));
  EXPECT_EQ(engine->optimizer_step(), 1);
}

int main(int argc, char** argv) { return switchyard::comm::testing::run_all_tests_on_every_rank(argc, argv); }
