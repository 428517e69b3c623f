// MoETransformer from C++, as the sharding engine will drive it: the UnitSequence run unit
// by unit on detached inputs, backpropagated unit by unit in reverse, must give the
// parameter gradients of one forward + backward (float64). Also the unit descriptions and
// the option errors. The Hugging Face comparisons are in tests/python.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "switchyard/nn/moe_transformer.h"
#include "../common/error_of.h"

namespace sy = switchyard::nn;

namespace {

sy::MoETransformerOptions small_options() {
  sy::MoETransformerOptions o;
  o.vocab_size = 37;
  o.d_model = 16;
  o.n_layers = 4;
  o.n_heads = 4;
  o.n_kv_heads = 2;
  o.ffn_hidden = 24;
  o.max_seq_len = 12;
  o.moe_layer_freq = 1;
  o.first_k_dense = 1;
  o.tie_embeddings = true;
  o.init_std = 0.1;
  o.dtype = "float64";
  o.moe.d_model = o.d_model;
  o.moe.init_std = o.init_std;
  o.moe.num_experts = 4;
  o.moe.top_k = 2;
  o.moe.ffn_hidden = 8;
  o.moe.gating_residual = true;
  o.moe.num_shared_experts = 1;
  o.moe.z_loss_coeff = 0.01;
  return o;
}

using switchyard::testing::error_of;

}  // namespace

TEST(MoETransformer, UnitByUnitBackwardEqualsForwardBackward) {
  torch::manual_seed(0);
  sy::MoETransformer model(small_options());
  const at::Tensor ids = torch::randint(0, 37, {2, 9}, torch::kLong);
  at::Tensor targets = torch::randint(0, 37, {2, 9}, torch::kLong);
  targets.index_put_({0, 0}, -100);

  sy::TransformerOutput ref = model->forward(ids, targets);
  (ref.loss + ref.aux_loss).backward();
  std::map<std::string, at::Tensor> expected;
  for (const auto& p : model->named_parameters()) expected[p.key()] = p.value().grad().clone();
  model->zero_grad();

  const int64_t n = model->num_units();
  ASSERT_EQ(n, 6);
  const sy::UnitBatch batch{ids, targets};
  std::vector<std::vector<at::Tensor>> unit_inputs(n);
  std::vector<sy::UnitStep> steps(n);
  std::vector<at::Tensor> state;
  for (int64_t i = 0; i < n; ++i) {
    for (const auto& t : state) {
      unit_inputs[i].push_back(t.defined() ? t.detach().requires_grad_(true) : at::Tensor());
    }
    steps[i] = model->run_unit(i, unit_inputs[i], batch);
    state = steps[i].outputs;
  }
  ASSERT_EQ(steps[n - 1].outputs.size(), 1u);
  EXPECT_TRUE(torch::equal(steps[n - 1].outputs[0], ref.loss));

  std::vector<at::Tensor> grads_out;
  for (int64_t i = n - 1; i >= 0; --i) {
    std::vector<at::Tensor> tensors, grads;
    const auto& outs = steps[i].outputs;
    for (size_t k = 0; k < outs.size(); ++k) {
      const at::Tensor g = i == n - 1 ? torch::ones_like(outs[k]) : grads_out[k];
      if (outs[k].defined() && g.defined()) {
        tensors.push_back(outs[k]);
        grads.push_back(g);
      }
    }
    if (steps[i].aux_loss.defined()) {
      tensors.push_back(steps[i].aux_loss);
      grads.push_back(torch::ones_like(steps[i].aux_loss));
    }
    torch::autograd::backward(tensors, grads);
    grads_out.clear();
    for (const auto& t : unit_inputs[i]) grads_out.push_back(t.defined() ? t.grad() : at::Tensor());
  }
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::allclose(p.value().grad(), expected[p.key()], 1e-12, 1e-14)) << p.key();
  }
}

TEST(MoETransformer, UnitsListEveryParameterOnce) {
  sy::MoETransformer model(small_options());
  std::map<std::string, int> uses;
  for (int64_t i = 0; i < model->num_units(); ++i) {
    for (const auto& p : model->unit_parameters(i)) {
      ++uses[p.name];
      EXPECT_EQ(p.expert, p.name.find(".mlp.experts.") != std::string::npos) << p.name;
    }
  }
  for (const auto& p : model->named_parameters()) {
    if (p.key() == "lm_head.weight") continue;  // tied: listed as model.embed_tokens.weight
    EXPECT_EQ(uses[p.key()], p.key() == "model.embed_tokens.weight" ? 2 : 1) << p.key();
  }
  EXPECT_EQ(model->unit_name(0), "embed");
  EXPECT_EQ(model->unit_name(2), "blocks.1");
  EXPECT_EQ(model->unit_name(5), "head");
  EXPECT_EQ(model->moe_layers().size(), 3u);
}

TEST(MoETransformer, BadOptionsNameTheKey) {
  auto o = small_options();
  o.n_heads = 3;
  EXPECT_NE(error_of([&] { sy::MoETransformer m(o); }).find("model.n_heads"), std::string::npos);
  o = small_options();
  o.n_kv_heads = 3;
  EXPECT_NE(error_of([&] { sy::MoETransformer m(o); }).find("model.n_kv_heads"), std::string::npos);
  o = small_options();
  o.moe.d_model = 8;
  EXPECT_NE(error_of([&] { sy::MoETransformer m(o); }).find("moe.d_model"), std::string::npos);
}
