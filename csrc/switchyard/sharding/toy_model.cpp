#include "switchyard/sharding/toy_model.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/options/embedding.h>
#include <torch/nn/options/linear.h>
#include <torch/utils.h>

#include "switchyard/nn/mlp.h"
#include "switchyard/nn/moe_layer.h"

namespace switchyard::sharding {

ToyMoEStackImpl::ToyMoEStackImpl(ToyMoEStackOptions options) : options_(std::move(options)) {
  const int64_t d = options_.moe.d_model;
  TORCH_CHECK_VALUE(options_.vocab > 0 && options_.num_blocks >= 0 && options_.mlp_hidden > 0,
                    "ToyMoEStack: expected vocab > 0, num_blocks >= 0, mlp_hidden > 0");
  embed = register_module("embed", torch::nn::Embedding(options_.vocab, d));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t b = 0; b < options_.num_blocks; ++b) {
    if (b % 2 == 0) blocks->push_back(nn::MLP(d, options_.mlp_hidden, options_.moe.init_std));
    else blocks->push_back(nn::MoELayer(options_.moe));
  }
  const torch::NoGradGuard no_grad;
  embed->weight.normal_(0.0, 1.0);
  if (options_.tie_embeddings) {
    head_bias = register_parameter("head_bias", at::zeros({options_.vocab}));
  } else {
    head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(d, options_.vocab)));
  }
}

std::string ToyMoEStackImpl::unit_name(int64_t i) const {
  if (i == 0) return "embed";
  if (i == num_units() - 1) return "head";
  return "blocks." + std::to_string(i - 1);
}

std::vector<nn::UnitParameter> ToyMoEStackImpl::unit_parameters(int64_t i) {
  TORCH_CHECK_INDEX(i >= 0 && i < num_units(), "ToyMoEStack: unit ", i, " out of [0, ", num_units(), ")");
  std::vector<nn::UnitParameter> out;
  auto add_all = [&](torch::nn::Module& m, const std::string& prefix) {
    for (const auto& item : m.named_parameters(/*recurse=*/true)) {
      const bool expert = item.key().rfind("experts.", 0) == 0;
      out.push_back({prefix + item.key(), item.value(), expert});
    }
  };
  if (i == 0) {
    add_all(*embed, "embed.");
  } else if (i == num_units() - 1) {
    if (options_.tie_embeddings) {
      out.push_back({"embed.weight", embed->weight, false});
      out.push_back({"head_bias", head_bias, false});
    } else {
      add_all(*head, "head.");
    }
  } else {
    add_all(*blocks[i - 1], "blocks." + std::to_string(i - 1) + ".");
  }
  return out;
}

nn::UnitStep ToyMoEStackImpl::run_unit(int64_t i, const std::vector<at::Tensor>& inputs,
                                       const nn::UnitBatch& batch) {
  TORCH_CHECK_INDEX(i >= 0 && i < num_units(), "ToyMoEStack: unit ", i, " out of [0, ", num_units(), ")");
  nn::UnitStep s;
  if (i == 0) {
    s.outputs = {embed(batch.input_ids)};
    return s;
  }
  TORCH_CHECK_VALUE(inputs.size() == 1 && inputs[0].defined(), "ToyMoEStack: unit ", unit_name(i),
                    " expects one input (the hidden states), got ", inputs.size());
  const at::Tensor& x = inputs[0];
  if (i == num_units() - 1) {
    const at::Tensor logits = options_.tie_embeddings
                                  ? at::linear(x, embed->weight, head_bias)
                                  : head(x);
    s.outputs = {at::cross_entropy_loss(logits.reshape({-1, options_.vocab}),
                                        batch.targets.reshape({-1}), {}, at::Reduction::Mean, -100)};
    return s;
  }
  const auto& block = blocks[i - 1];
  if (auto* mlp = block->as<nn::MLP>()) {
    s.outputs = {x + mlp->forward(x)};
  } else {
    nn::MoEOutput o = block->as<nn::MoELayer>()->forward(x);
    s.outputs = {x + o.output};
    s.aux_loss = o.aux_loss;
    s.stats.emplace_back("expert_counts", o.expert_counts);
  }
  return s;
}

std::pair<at::Tensor, at::Tensor> ToyMoEStackImpl::forward(const at::Tensor& input_ids,
                                                           const at::Tensor& targets) {
  const nn::UnitBatch batch{input_ids, targets};
  std::vector<at::Tensor> prev;
  at::Tensor aux = at::zeros({}, embed->weight.options());
  for (int64_t i = 0; i < num_units(); ++i) {
    nn::UnitStep s = run_unit(i, prev, batch);
    if (s.aux_loss.defined()) aux = aux + s.aux_loss;
    prev = std::move(s.outputs);
  }
  return {prev.at(0), aux};
}

}  // namespace switchyard::sharding
