// LMHead: the output projection hidden [..., d] -> logits [..., vocab], a bias-free linear
// layer (weight [vocab, d], Linear's layout) whose weight may be another module's tensor.
//
// Why not torch::nn::Linear: tied embeddings need lm_head.weight to BE embed_tokens.weight
// (one tensor, listed under both names in the state_dict, as in Hugging Face), and a
// LibTorch module offers no way to swap the tensor behind a registered parameter.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace switchyard::nn {

class LMHeadImpl : public torch::nn::Module {
 public:
  // A fresh [vocab, d] weight (zeros; the model initialises it).
  LMHeadImpl(int64_t d_model, int64_t vocab_size);
  // Tied: `shared_weight` [vocab, d] is registered as this module's weight, not copied.
  explicit LMHeadImpl(const at::Tensor& shared_weight);

  // x [..., d] -> [..., vocab]
  at::Tensor forward(const at::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  at::Tensor weight;
};
TORCH_MODULE(LMHead);

}  // namespace switchyard::nn
