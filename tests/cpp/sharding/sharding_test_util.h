// Helpers of the sharding engine's multi-rank tests: a tiny ToyMoEStack every rank builds
// identically, deterministic micro-batches any rank can rebuild for any other rank, and the
// single-process reference -- one process holding the whole model, running every rank's
// micro-batches as gradient accumulation, then LibTorch's own torch::optim::AdamW (with
// torch::nn::utils::clip_grad_norm_): nothing of the engine's code.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "switchyard/comm/process_groups.h"
#include "switchyard/config/config.h"
#include "switchyard/nn/moe_layer.h"
#include "switchyard/sharding/sharded_engine.h"
#include "switchyard/sharding/toy_model.h"

namespace switchyard::sharding::testing {

struct Setup {
  int64_t vocab = 32, d_model = 8, num_blocks = 4, mlp_hidden = 12, num_experts = 4, ffn = 6;
  int64_t batch = 2, seq = 6;
  bool tie = false;
  at::ScalarType dtype = at::kDouble;
  int64_t seed = 7;
};

inline ToyMoEStack make_model(const Setup& s) {
  torch::manual_seed(s.seed);
  ToyMoEStackOptions o;
  o.vocab = s.vocab;
  o.num_blocks = s.num_blocks;
  o.mlp_hidden = s.mlp_hidden;
  o.tie_embeddings = s.tie;
  o.moe.d_model = s.d_model;
  o.moe.num_experts = s.num_experts;
  o.moe.top_k = 2;
  o.moe.ffn_hidden = s.ffn;
  o.moe.aux_loss_coeff = 0.01;
  o.moe.z_loss_coeff = 0.001;
  o.moe.init_std = 0.2;  // large enough that routing and losses move in 5 steps
  ToyMoEStack m(o);
  m->to(s.dtype);
  return m;
}

// Micro-batch `a` of `rank` at optimizer step `step`: the same on every process.
inline nn::UnitBatch make_batch(const Setup& s, int64_t step, int64_t rank, int64_t a) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000003 * step + 1009 * rank + a + 17);
  nn::UnitBatch b;
  b.input_ids = at::randint(s.vocab, {s.batch, s.seq}, gen, at::kLong);
  b.targets = at::randint(s.vocab, {s.batch, s.seq}, gen, at::kLong);
  return b;
}

inline config::Config make_config(int64_t ep, bool shard, int64_t accum, double clip,
                                  const std::string& precision = "fp64") {
  config::Config c;
  c.parallel.expert_parallel = ep;
  c.parallel.data_parallel = 0;
  c.parallel.shard_dense = shard;
  c.train.grad_accum = accum;
  c.train.grad_clip = clip;
  c.train.weight_decay = 0.1;
  c.train.beta1 = 0.9;
  c.train.beta2 = 0.95;
  c.train.eps = 1e-8;
  c.train.precision = precision;
  return c;
}

struct Reference {
  ToyMoEStack model{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::vector<double> losses, aux_losses, grad_norms;
};

inline Reference make_reference(const Setup& s, const config::Config& c) {
  Reference r;
  r.model = make_model(s);
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : r.model->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto opts = [&](double wd) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(1e-3);
    o->betas({c.train.beta1, c.train.beta2}).eps(c.train.eps).weight_decay(wd);
    return o;
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, opts(c.train.weight_decay));
  groups.emplace_back(no_decay, opts(0.0));
  r.optimizer = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(1e-3));
  return r;
}

// One reference step over the global batch of `world` ranks. `inject`: added to the
// gradients after accumulation (the clipping test's huge gradient), by parameter name.
inline void reference_step(Reference& r, const Setup& s, const config::Config& c, int64_t world,
                           int64_t step, double lr,
                           const std::map<std::string, at::Tensor>& inject = {}) {
  r.optimizer->zero_grad();
  const int64_t A = c.train.grad_accum;
  double loss = 0, aux = 0;
  for (int64_t rank = 0; rank < world; ++rank) {
    for (int64_t a = 0; a < A; ++a) {
      const nn::UnitBatch b = make_batch(s, step, rank, a);
      auto [l, x] = r.model->forward(b.input_ids, b.targets);
      ((l + x) / static_cast<double>(world * A)).backward();
      loss += l.item<double>();
      aux += x.item<double>();
    }
  }
  {
    torch::NoGradGuard no_grad;
    for (const auto& item : r.model->named_parameters()) {
      auto it = inject.find(item.key());
      if (it != inject.end()) item.value().mutable_grad().add_(it->second);
    }
  }
  const double clip = c.train.grad_clip > 0 ? c.train.grad_clip : 1e300;
  r.grad_norms.push_back(torch::nn::utils::clip_grad_norm_(r.model->parameters(), clip));
  for (auto& g : r.optimizer->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
  r.optimizer->step();
  r.losses.push_back(loss / static_cast<double>(world * A));
  r.aux_losses.push_back(aux / static_cast<double>(world * A));
}

// The engine's final parameters against the reference's: dense ones gathered, expert ones
// this rank's rows.
inline void expect_same_parameters(ShardedEngine& engine, ToyMoEStack& engine_model,
                                   Reference& ref, double rtol, double atol) {
  const auto dense = engine.gather_dense_parameters();
  const auto experts = engine.local_expert_parameters();
  std::map<std::string, at::Tensor> want;
  for (const auto& item : ref.model->named_parameters()) want[item.key()] = item.value().detach();
  for (const auto& [name, value] : dense) {
    ASSERT_TRUE(want.count(name)) << name;
    EXPECT_TRUE(at::allclose(value.to(at::kDouble), want[name].to(at::kDouble), rtol, atol))
        << name << " max diff " << (value.to(at::kDouble) - want[name].to(at::kDouble)).abs().max().item<double>();
  }
  // Expert rows: find each MoE layer's local ids.
  int64_t block = 0;
  for (const auto& m : engine_model->blocks->children()) {
    if (auto layer = std::dynamic_pointer_cast<nn::MoELayerImpl>(m)) {
      const at::Tensor ids = at::tensor(layer->local_expert_ids(), at::kLong);
      for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
        const std::string name = "blocks." + std::to_string(block) + ".experts." + proj;
        ASSERT_TRUE(experts.count(name)) << name;
        const at::Tensor expect = want.at(name).index_select(0, ids).to(at::kDouble);
        EXPECT_TRUE(at::allclose(experts.at(name).to(at::kDouble), expect, rtol, atol))
            << name << " max diff " << (experts.at(name).to(at::kDouble) - expect).abs().max().item<double>();
      }
    }
    ++block;
  }
  EXPECT_EQ(dense.size() + experts.size(), want.size());
}

}  // namespace switchyard::sharding::testing
