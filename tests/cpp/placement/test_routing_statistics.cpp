// Routing statistics from C++ (the API the live re-placement codes against): a hand-checked
// record, the hook on an MoELayer (training + grad mode only), the placement problem it
// yields, and a trace round trip with the shape check. Python tests
// (tests/python/test_routing_statistics.py) compare every statistic with a reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <vector>

#include "switchyard/nn/moe_layer.h"
#include "switchyard/placement/routing_statistics.h"
#include "switchyard/placement/routing_trace.h"
#include "../common/error_of.h"

namespace sp = switchyard::placement;
using switchyard::testing::error_of;

namespace {

std::vector<double> values(const at::Tensor& t) {
  const at::Tensor c = t.contiguous().to(at::kDouble);
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

at::Tensor ids(std::vector<int64_t> v, int64_t T, int64_t K) { return torch::tensor(v, torch::kLong).view({T, K}); }

}  // namespace

TEST(RoutingStatistics, CountsKeptSlotsOnly) {
  sp::RoutingStatistics s({4, 3}, /*num_source_ranks=*/2, /*source_rank=*/1);
  // token 0: experts 0, 2; token 1: expert 1 (its 3 is dropped); token 2: 3 and a null id 5
  const at::Tensor topk = ids({0, 2, 1, 3, 3, 5}, 3, 2);
  const at::Tensor kept = torch::tensor({true, true, true, false, true, true}).view({3, 2});
  s.record(0, topk, kept);
  s.record(1, ids({2, 0, 1}, 3, 1), torch::ones({3, 1}, torch::kBool));
  const sp::LayerStatistics& l0 = s.layer(0);
  EXPECT_EQ(values(l0.tokens), (std::vector<double>{1, 1, 1, 1}));
  EXPECT_EQ(values(l0.traffic[0]), (std::vector<double>{0, 0, 0, 0}));
  EXPECT_EQ(values(l0.traffic[1]), (std::vector<double>{1, 1, 1, 1}));
  EXPECT_EQ(l0.coactivation[0][2].item<double>(), 1);
  EXPECT_EQ(l0.coactivation[2][0].item<double>(), 1);
  EXPECT_EQ(l0.coactivation.sum().item<double>(), 2);
  // transitions: 0->2, 2->2, 1->0, 3->1
  EXPECT_EQ(l0.transitions.sizes(), (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(l0.transitions[0][2].item<double>(), 1);
  EXPECT_EQ(l0.transitions[2][2].item<double>(), 1);
  EXPECT_EQ(l0.transitions[1][0].item<double>(), 1);
  EXPECT_EQ(l0.transitions[3][1].item<double>(), 1);
  EXPECT_EQ(l0.transitions.sum().item<double>(), 4);
  EXPECT_FALSE(s.layer(1).transitions.defined());

  s.end_step();
  EXPECT_EQ(values(s.layer(0).tokens_ema), values(l0.tokens));
  const sp::PlacementProblem p = s.placement_problem(0);
  EXPECT_EQ(p.load, (std::vector<double>{1, 1, 1, 1}));
  EXPECT_EQ(p.num_ranks, 2);
  EXPECT_EQ(p.traffic.size(), 8u);
  EXPECT_EQ(p.coactivation.size(), 16u);

  EXPECT_NE(error_of([&] { s.record(0, topk, kept.view({2, 3})); }).find("expected kept of shape"),
            std::string::npos);
}

TEST(RoutingStatistics, HookRecordsTrainingForwardsWithGradOnly) {
  torch::manual_seed(0);
  switchyard::nn::MoELayerOptions o;
  o.d_model = 8;
  o.num_experts = 4;
  o.top_k = 2;
  o.ffn_hidden = 8;
  auto model = std::make_shared<torch::nn::Module>();
  auto layer = model->register_module("mlp", switchyard::nn::MoELayer(o));
  sp::RoutingStatistics s({4}, 1, 0);
  ASSERT_EQ(s.attach(*model), 1);
  EXPECT_EQ(s.layer_info()[0].name, "mlp");
  EXPECT_EQ(s.layer_info()[0].top_k, 2);
  const at::Tensor x = torch::randn({5, 8});
  model->eval();
  layer->forward(x);
  model->train();
  {
    torch::NoGradGuard no_grad;
    layer->forward(x);
  }
  EXPECT_EQ(s.layer(0).tokens.sum().item<double>(), 0);
  layer->forward(x);
  EXPECT_EQ(s.layer(0).tokens.sum().item<double>(), 10);

  sp::RoutingStatistics other({5}, 1, 0);
  EXPECT_NE(error_of([&] { other.attach(*model); }).find("has 4 experts but experts_per_layer[0] = 5"),
            std::string::npos);
  {
    sp::RoutingStatistics gone({4}, 1, 0);
    gone.attach(*model);
  }
  layer->forward(x);  // the observer outlived its statistics: silent
}

TEST(RoutingTrace, RoundTripAndShapeCheck) {
  sp::RoutingStatistics s({4, 3}, 2, 0, 0.5);
  s.record(0, ids({0, 1, 2, 3}, 2, 2), torch::ones({2, 2}, torch::kBool));
  s.record(1, ids({2, 1}, 2, 1), torch::ones({2, 1}, torch::kBool));
  s.end_step();
  const std::string path =
      (std::filesystem::temp_directory_path() / ("sy_trace_" + std::to_string(::getpid()) + ".safetensors")).string();
  sp::save_trace(path, s);
  const sp::RoutingTrace t = sp::load_trace(path);
  EXPECT_EQ(t.statistics.steps(), 1);
  EXPECT_EQ(t.statistics.ema_decay(), 0.5);
  EXPECT_EQ(t.total_tokens, (std::vector<double>{4, 2}));
  for (int64_t l = 0; l < 2; ++l) {
    EXPECT_TRUE(torch::equal(t.statistics.layer(l).traffic, s.layer(l).traffic));
    EXPECT_TRUE(torch::equal(t.statistics.layer(l).coactivation, s.layer(l).coactivation));
  }
  EXPECT_TRUE(torch::equal(t.statistics.layer(0).transitions, s.layer(0).transitions));
  sp::check_trace_matches(t, {4, 3}, 2);
  const std::string msg = error_of([&] { sp::check_trace_matches(t, {4, 16}, 2); });
  EXPECT_NE(msg.find("was recorded on a model with 3 experts in MoE layer 1, this model has 16"), std::string::npos)
      << msg;
  std::filesystem::remove(path);
}
