// The token permutation C++ API (switchyard/ops/permute.h) from pure C++: the round trip
// with a top-k routing, the tail, autograd through the dispatcher, and an argument error.
// The exhaustive parity tests are in tests/python/test_permute.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#include "switchyard/ops/permute.h"
#include "switchyard/ops/routing.h"

namespace sy = switchyard::ops;

TEST(PermuteApi, TopkRoundTripGivesKTimesX) {
  torch::manual_seed(0);
  const int64_t T = 32, d = 12, k = 3;
  const auto x = torch::randn({T, d});
  const sy::Routing r = sy::route_topk(torch::randn({T, 8}), k);
  const auto rows = sy::permute_tokens(x, r.token_index, r.expert_index);
  ASSERT_EQ(rows.sizes(), torch::IntArrayRef({T * k, d}));
  EXPECT_TRUE(torch::equal(rows, x.index_select(0, r.token_index)));  // nothing dropped

  // weights 1 (given or absent): every token comes back k times
  const auto y_ones =
      sy::unpermute_tokens(rows, r.token_index, r.expert_index, torch::ones({T * k}), T);
  const auto y_none = sy::unpermute_tokens(rows, r.token_index, r.expert_index, std::nullopt, T);
  EXPECT_TRUE(torch::equal(y_ones, y_none));
  EXPECT_TRUE(torch::allclose(y_none, k * x));
  // the renormalized combine weights sum to 1 per token: x comes back
  const auto y_w = sy::unpermute_tokens(rows, r.token_index, r.expert_index, r.slot_weights, T);
  EXPECT_TRUE(torch::allclose(y_w, x, 1e-5, 1e-6));
}

TEST(PermuteApi, TailIsZeroAndNeverRead) {
  torch::manual_seed(1);
  const int64_t T = 40, d = 5;
  sy::RouteTopkOptions o;
  o.num_routed_experts = 6;  // experts 6 and 7 are null experts: their slots go to the tail
  o.capacity_factor = 0.6;   // and some routed slots are dropped
  const sy::Routing r = sy::route_topk(torch::randn({T, 8}), 2, o);
  const auto tail = r.expert_index.lt(0);
  ASSERT_GT(tail.sum().item<int64_t>(), 0);

  const auto rows = sy::permute_tokens(torch::randn({T, d}), r.token_index, r.expert_index);
  EXPECT_TRUE(rows.index({tail}).eq(0).all().item<bool>());

  auto garbage = rows.clone();
  garbage.index_put_({tail}, std::numeric_limits<float>::quiet_NaN());
  const auto y = sy::unpermute_tokens(garbage, r.token_index, r.expert_index, r.slot_weights, T);
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  EXPECT_TRUE(torch::equal(
      y, sy::unpermute_tokens(rows, r.token_index, r.expert_index, r.slot_weights, T)));
}

TEST(PermuteApi, AutogradFromCpp) {
  torch::manual_seed(2);
  const int64_t T = 24, d = 7;
  const auto opts = torch::dtype(torch::kDouble);
  const auto logits = torch::randn({T, 6}, opts.requires_grad(true));
  sy::RouteTopkOptions o;
  o.capacity_factor = 0.8;
  const sy::Routing r = sy::route_topk(logits, 2, o);
  const auto x = torch::randn({T, d}, opts.requires_grad(true));

  // permute -> (a stand-in for the experts) -> weighted unpermute
  const auto rows = sy::permute_tokens(x, r.token_index, r.expert_index);
  const auto y = sy::unpermute_tokens(rows.tanh(), r.token_index, r.expert_index,
                                      r.slot_weights, T);
  ASSERT_TRUE(y.requires_grad());
  const auto g = torch::randn({T, d}, opts);
  y.backward(g);
  ASSERT_TRUE(x.grad().defined());
  ASSERT_TRUE(logits.grad().defined());  // through slot_weights into route_topk's backward

  // the same through ATen index ops, from the same routing
  const auto x2 = x.detach().clone().requires_grad_(true);
  const auto w2 = r.slot_weights.detach().clone().requires_grad_(true);
  const auto valid = r.expert_index.ge(0);
  const auto tok = r.token_index.index({valid});
  const auto y2 = torch::zeros({T, d}, opts).index_add(
      0, tok, x2.index_select(0, tok).tanh() * w2.index({valid}).unsqueeze(1));
  y2.backward(g);
  EXPECT_TRUE(torch::allclose(y, y2, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(x.grad(), x2.grad(), 1e-12, 1e-12));

  // d loss / d slot_weights, via the logits' gradient: compare with a leaf weight
  const auto w3 = r.slot_weights.detach().clone().requires_grad_(true);
  sy::unpermute_tokens(rows.detach().tanh(), r.token_index, r.expert_index, w3, T).backward(g);
  EXPECT_TRUE(torch::allclose(w3.grad(), w2.grad(), 1e-12, 1e-12));
}

TEST(PermuteApi, OutOfRangeTokenThrows) {
  const auto x = torch::randn({4, 3});
  try {
    sy::permute_tokens(x, torch::tensor({0, 9}, torch::kLong), torch::tensor({0, 2}, torch::kLong));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "permute_tokens: token_index[1] = 9 is outside [0, num_tokens) with "
                  "num_tokens = 4"),
              std::string::npos)
        << e.what();
  }
}
