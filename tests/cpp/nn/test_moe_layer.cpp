// The MoE layer from C++: construction from options, a forward/backward that reaches every
// parameter, the grouped experts against a per-expert loop in float64, training with a
// LibTorch optimizer, and the errors bad options and bad inputs raise.
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>
#include <torch/torch.h>

#include <string>

#include "switchyard/nn/moe_layer.h"
#include "../common/error_of.h"

namespace sy = switchyard::nn;

namespace {

sy::MoELayerOptions small_options() {
  sy::MoELayerOptions o;
  o.d_model = 16;
  o.num_experts = 4;
  o.top_k = 2;
  o.ffn_hidden = 24;
  o.num_shared_experts = 1;
  o.shared_expert_gate = true;
  o.z_loss_coeff = 1e-3;
  return o;
}

using switchyard::testing::error_of;

}  // namespace

TEST(MoELayer, ForwardAndBackwardReachEveryParameter) {
  torch::manual_seed(0);
  sy::MoELayer layer(small_options());
  const auto x = torch::randn({3, 5, 16});
  const sy::MoEOutput out = layer->forward(x);
  ASSERT_EQ(out.output.sizes(), x.sizes());
  EXPECT_EQ(out.router_logits.sizes(), (std::vector<int64_t>{15, 4}));
  EXPECT_EQ(out.expert_counts.sum().item<int64_t>(), 15 * 2);  // lossless: every slot kept
  EXPECT_EQ(out.num_dropped.item<int64_t>(), 0);
  EXPECT_DOUBLE_EQ(out.real_experts_per_token.item<double>(), 2.0);
  (out.output.square().sum() + out.aux_loss).backward();
  for (const auto& p : layer->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

TEST(MoELayer, ParameterNamesAndShapes) {
  sy::MoELayer layer(small_options());
  const auto params = layer->named_parameters();
  EXPECT_EQ(params["router.weight"].sizes(), (std::vector<int64_t>{4, 16}));
  EXPECT_EQ(params["experts.gate_proj"].sizes(), (std::vector<int64_t>{4, 16, 24}));
  EXPECT_EQ(params["experts.up_proj"].sizes(), (std::vector<int64_t>{4, 16, 24}));
  EXPECT_EQ(params["experts.down_proj"].sizes(), (std::vector<int64_t>{4, 24, 16}));
  EXPECT_EQ(params["shared_experts.gate_proj.weight"].sizes(), (std::vector<int64_t>{24, 16}));
  EXPECT_EQ(params["shared_expert_gate.weight"].sizes(), (std::vector<int64_t>{1, 16}));
  EXPECT_EQ(params.size(), 8u);
}

TEST(GroupedExperts, MatchesAPerExpertLoopInFloat64) {
  torch::manual_seed(1);
  sy::GroupedExperts experts(3, 8, 12, "swiglu");
  experts->to(torch::kFloat64);
  const auto counts = torch::tensor({4, 0, 5}, torch::kInt64);
  const auto rows = torch::randn({10, 8}, torch::kFloat64);  // the last row is tail
  const auto y = experts->forward(rows, counts);
  int64_t start = 0;
  for (int64_t e = 0; e < 3; ++e) {
    const int64_t c = counts[e].item<int64_t>();
    const auto xe = rows.narrow(0, start, c);
    const auto ref = torch::matmul(torch::silu(torch::matmul(xe, experts->gate_proj[e])) *
                                       torch::matmul(xe, experts->up_proj[e]),
                                   experts->down_proj[e]);
    EXPECT_TRUE(torch::allclose(y.narrow(0, start, c), ref, 1e-12, 1e-12)) << "expert " << e;
    start += c;
  }
  EXPECT_TRUE(y[9].eq(0).all().item<bool>());
}

TEST(MoELayer, TrainsWithALibTorchOptimizer) {
  torch::manual_seed(2);
  sy::MoELayer layer(small_options());
  const auto x = torch::randn({64, 16});
  const auto target = torch::sin(x.flip(1));
  torch::optim::AdamW opt(layer->parameters(), torch::optim::AdamWOptions(3e-3));
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    const auto out = layer->forward(x);
    const auto loss = torch::mse_loss(out.output, target) + out.aux_loss;
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  EXPECT_LT(last, 0.7 * first);
}

TEST(MoELayer, SelectionBiasMovesTowardsBalance) {
  auto o = small_options();
  o.score_func = "sigmoid";
  o.bias_update_rate = 0.1;
  sy::MoELayer layer(o);
  {
    torch::NoGradGuard no_grad;
    layer->router->weight.zero_();
    layer->router->weight[0].fill_(1.0);  // expert 0 wins for inputs with a positive sum
  }
  const auto x = torch::ones({8, 16});
  layer->forward(x);
  layer->update_selection_bias();
  const auto bias = layer->router->selection_bias;
  EXPECT_LT(bias[0].item<double>(), 0.0);  // the overloaded expert is pushed down
  EXPECT_GT(bias[3].item<double>(), 0.0);
  layer->update_selection_bias();  // nothing new seen: no change
  EXPECT_TRUE(torch::equal(bias, layer->router->selection_bias));
}

TEST(MoELayer, RejectsBadOptionsNamingTheField) {
  auto o = small_options();
  o.activation = "relu";
  EXPECT_NE(error_of([&] { sy::MoELayer l(o); }).find("activation must be one of"),
            std::string::npos);
  o = small_options();
  o.top_k = 9;
  EXPECT_NE(error_of([&] { sy::MoELayer l(o); }).find("top_k 9 exceeds the 4 router outputs"),
            std::string::npos);
  o = small_options();
  o.router = "expert_choice";
  EXPECT_NE(error_of([&] { sy::MoELayer l(o); }).find("capacity_factor > 0"), std::string::npos);
}

TEST(MoELayer, RejectsBadInputsNamingTheShapes) {
  sy::MoELayer layer(small_options());
  EXPECT_NE(error_of([&] { layer->forward(torch::randn({4, 8})); })
                .find("expected x of shape [..., 16]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { layer->forward(torch::randn({16})); }).find("got [16]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { layer->forward(torch::randn({4, 16}, torch::kFloat64)); })
                .find("layer's dtype Float (router.weight), got Double"),
            std::string::npos);
  EXPECT_NE(error_of([&] { layer->forward(torch::randn({4, 16}), torch::randn({4, 4})); })
                .find("no gating residual"),
            std::string::npos);
}
