// The routing C++ API (switchyard/ops/routing.h) from pure C++: results, the grouped layout,
// autograd through the dispatcher, and argument errors. The exhaustive parity tests are
// in tests/python/test_route_topk.py and test_route_expert_choice.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "switchyard/ops/routing.h"

namespace sy = switchyard::ops;

TEST(RoutingApi, TopkSelectsAndGroups) {
  // token 0 prefers experts 2 then 0; token 1 prefers 1 then 2; ties go to the lower expert
  const auto logits = torch::tensor({{1.0, 0.0, 3.0, 0.0}, {0.0, 2.0, 2.0, -1.0}});
  const sy::Routing r = sy::route_topk(logits, 2);
  EXPECT_TRUE(torch::equal(r.topk_experts, torch::tensor({{2, 0}, {1, 2}}, torch::kLong)));
  // softmax over the selected logits
  const auto w0 = torch::softmax(torch::tensor({3.0, 1.0}), 0);
  EXPECT_TRUE(torch::allclose(r.topk_weights[0], w0.to(torch::kFloat)));
  EXPECT_TRUE(torch::allclose(r.topk_weights[1], torch::tensor({0.5f, 0.5f})));
  // grouped by (expert, token): e0:t0, e1:t1, e2:t0, e2:t1
  EXPECT_TRUE(torch::equal(r.expert_index, torch::tensor({0, 1, 2, 2}, torch::kLong)));
  EXPECT_TRUE(torch::equal(r.token_index, torch::tensor({0, 1, 0, 1}, torch::kLong)));
  EXPECT_TRUE(torch::equal(r.slot_index, torch::tensor({1, 2, 0, 3}, torch::kLong)));
  EXPECT_TRUE(torch::equal(r.expert_counts, torch::tensor({1, 1, 2, 0}, torch::kLong)));
  EXPECT_EQ(r.num_dropped.item<int64_t>(), 0);
}

TEST(RoutingApi, TopkOptions) {
  torch::manual_seed(0);
  const auto logits = torch::randn({64, 8});
  sy::RouteTopkOptions o;
  o.score_func = "sigmoid";
  o.renormalize = false;
  o.num_routed_experts = 6;
  o.capacity_factor = 0.5;
  o.drop_policy = "score";
  const sy::Routing r = sy::route_topk(logits, 2, o);
  EXPECT_EQ(r.expert_counts.size(0), 6);
  EXPECT_EQ(r.expert_load.size(0), 8);
  EXPECT_EQ((r.expert_load.slice(0, 0, 6) - r.expert_counts).sum().item<int64_t>(),
            r.num_dropped.item<int64_t>());
  EXPECT_LE(r.expert_counts.max().item<int64_t>(), 11);  // ceil(0.5 * 64 * 2 / 6)
}

TEST(RoutingApi, TopkAutogradFromCpp) {
  torch::manual_seed(1);
  const auto logits = torch::randn({16, 8}, torch::dtype(torch::kDouble).requires_grad(true));
  const sy::Routing r = sy::route_topk(logits, 2);
  ASSERT_TRUE(r.topk_weights.requires_grad());
  (r.topk_weights.select(1, 0).sum() + r.slot_weights.pow(2).sum()).backward();
  ASSERT_TRUE(logits.grad().defined());

  // the same loss through ATen ops, from the same selection
  const auto x = logits.detach().clone().requires_grad_(true);
  const auto w = torch::softmax(x.gather(1, r.topk_experts), 1);
  (w.select(1, 0).sum() + w.pow(2).sum()).backward();
  EXPECT_TRUE(torch::allclose(logits.grad(), x.grad(), 1e-10, 1e-12));
}

TEST(RoutingApi, ExpertChoice) {
  torch::manual_seed(2);
  const auto logits = torch::randn({10, 4}, torch::requires_grad(true));
  const sy::ExpertChoiceRouting r = sy::route_expert_choice(logits, 1.0, 2);
  EXPECT_EQ(r.token_index.size(0), 4 * 5);  // C = ceil(1.0 * 10 * 2 / 4) = 5
  EXPECT_TRUE(torch::equal(r.expert_counts, torch::full({4}, 5, torch::kLong)));
  const auto p = torch::softmax(logits.detach(), 1);
  EXPECT_TRUE(torch::allclose(r.weights, p.index({r.token_index, r.expert_index})));
  r.weights.sum().backward();
  ASSERT_TRUE(logits.grad().defined());
  EXPECT_EQ(logits.grad().sizes(), logits.sizes());
}

TEST(RoutingApi, BadArgumentsThrow) {
  const auto logits = torch::randn({4, 8});
  try {
    sy::route_topk(logits, 9);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("route_topk: k must be in [1, num_experts=8], got 9"),
              std::string::npos);
  }
  sy::RouteTopkOptions o;
  o.score_func = "relu";
  EXPECT_THROW(sy::route_topk(logits, 2, o), c10::Error);
  EXPECT_THROW(sy::route_expert_choice(logits, 0.0), c10::Error);
}

TEST(RoutingApi, RealExpertsPerTokenCountsOnlyRoutedExperts) {
  // Expert 3 is a local (null) expert: token 0 picks {3, 1}, token 1 picks {0, 1}.
  const auto logits = torch::tensor({0.0, 1.0, 0.5, 4.0, 3.0, 0.0, 0.0, 0.0}).view({2, 4});
  sy::RouteTopkOptions options;
  options.num_routed_experts = 3;
  const sy::Routing r = sy::route_topk(logits, 2, options);
  EXPECT_DOUBLE_EQ(r.real_experts_per_token().item<double>(), 1.5);
  EXPECT_EQ(r.expert_counts.sum().item<int64_t>(), 3);
}
