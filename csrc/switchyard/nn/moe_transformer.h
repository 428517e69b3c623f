// MoETransformer: the decoder-only language model -- token embedding, n_layers pre-norm
// blocks (dense or MoE FFN, see transformer_block.h), final RMSNorm, output head.
//
// Names follow Hugging Face's LlamaForCausalLM: a submodule `model` holds embed_tokens,
// layers.{i} and norm; `lm_head` sits at the top. A dense model (moe_layer_freq = 0)
// therefore loads a LlamaForCausalLM state_dict as it is. With tie_embeddings, lm_head.weight
// IS model.embed_tokens.weight (one tensor under both names, as in Hugging Face).
//
// The model is a UnitSequence (unit_sequence.h): unit 0 = embedding, units 1..n_layers =
// the blocks, unit n_layers + 1 = head (final norm + lm_head + cross-entropy). Between
// blocks the state is {hidden [B, S, d], router logits [B*S, E_total] of the latest MoE
// block (undefined until one ran, and always without moe.gating_residual)}. forward() runs
// the same units in order. The model knows nothing of parallelism: moe_layers() hands its
// MoE layers to whoever makes them expert-parallel.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/nn/lm_head.h"
#include "switchyard/nn/moe_layer.h"
#include "switchyard/nn/rms_norm.h"
#include "switchyard/nn/rotary.h"
#include "switchyard/nn/transformer_block.h"
#include "switchyard/nn/transformer_options.h"
#include "switchyard/nn/unit_sequence.h"

namespace switchyard::nn {

// The `model` submodule: what Hugging Face calls LlamaModel (no logic of its own).
class DecoderImpl : public torch::nn::Module {
 public:
  DecoderImpl(const MoETransformerOptions& options, std::shared_ptr<const RotaryEmbedding> rope);

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  std::vector<TransformerBlock> blocks;  // layers, typed
};
TORCH_MODULE(Decoder);

// Statistics of one MoE block in a forward pass (detached): "aux_loss", "expert_counts",
// "expert_load", "num_dropped", "real_experts_per_token".
struct MoEBlockStats {
  int64_t layer = 0;  // block index, 0-based
  std::vector<std::pair<std::string, at::Tensor>> values;
};

struct TransformerOutput {
  at::Tensor logits;    // [B, S, vocab]; undefined when targets were given and return_logits false
  at::Tensor loss;      // 0-d mean cross-entropy over targets >= 0; undefined without targets
  at::Tensor aux_loss;  // 0-d sum of the MoE blocks' aux losses (0 without MoE blocks)
  std::vector<MoEBlockStats> moe_stats;  // one per MoE block, in order
};

class MoETransformerImpl : public torch::nn::Module, public UnitSequence {
 public:
  explicit MoETransformerImpl(MoETransformerOptions options);

  // input_ids int64 [B, S] (S <= max_seq_len, ids in [0, vocab_size)); targets int64 [B, S],
  // the next token of each position, < 0 ignored. The training objective is
  // loss + aux_loss. Logits are returned without targets, or with return_logits.
  TransformerOutput forward(const at::Tensor& input_ids,
                            const std::optional<at::Tensor>& targets = std::nullopt,
                            bool return_logits = false);

  // UnitSequence
  int64_t num_units() const override { return options_.n_layers + 2; }
  std::string unit_name(int64_t i) const override;
  std::vector<UnitParameter> unit_parameters(int64_t i) override;
  UnitStep run_unit(int64_t i, const std::vector<at::Tensor>& inputs,
                    const UnitBatch& batch) override;

  // The MoE layers, in block order (for expert parallelism: enable_expert_parallel on each).
  std::vector<MoELayer> moe_layers() const;
  // MoELayer::update_selection_bias on every MoE layer with this process's loads; call once per
  // optimizer step in a single-process loop. ShardedEngine does it itself, with the loads
  // summed over the job, after every step.
  void update_selection_bias();

  // The initialisation (docs/model.md): normal(0, init_std) for embeddings and projections,
  // ones for norms, init_std / sqrt(2 n_layers) for residual-output projections when
  // scale_residual_init.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;
  const MoETransformerOptions& options() const { return options_; }

  Decoder model{nullptr};
  LMHead lm_head{nullptr};

 private:
  void check_input_ids(const at::Tensor& input_ids) const;
  // Final norm + lm_head (+ the loss when targets are defined). Writes the logits into
  // *logits_out when it is not null; the loss path keeps no extra reference otherwise.
  at::Tensor head(const at::Tensor& hidden_BSd, const at::Tensor& targets, at::Tensor* logits_out);

  MoETransformerOptions options_;
  std::shared_ptr<const RotaryEmbedding> rope_;
};
TORCH_MODULE(MoETransformer);

}  // namespace switchyard::nn
