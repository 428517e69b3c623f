#include "switchyard/nn/moe_transformer.h"

#include <ATen/ATen.h>
#include <torch/nn/options/embedding.h>
#include <torch/utils.h>

#include <cmath>
#include <ostream>

namespace switchyard::nn {

namespace {

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float64") return at::kDouble;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  return at::kFloat;  // validate() rejected anything else
}

void append_parameters(std::vector<UnitParameter>& out, torch::nn::Module& module,
                       const std::string& prefix, bool experts_are_expert) {
  for (const auto& item : module.named_parameters()) {
    // The routed experts' stacked weights (mlp.experts.*) live on the ranks hosting them.
    const bool expert = experts_are_expert && item.key().rfind("mlp.experts.", 0) == 0;
    out.push_back({prefix + item.key(), item.value(), expert});
  }
}

}  // namespace

DecoderImpl::DecoderImpl(const MoETransformerOptions& o, std::shared_ptr<const RotaryEmbedding> rope) {
  embed_tokens = register_module(
      "embed_tokens", torch::nn::Embedding(torch::nn::EmbeddingOptions(o.vocab_size, o.d_model)));
  layers = register_module("layers", torch::nn::ModuleList());
  bool seen_moe = false;
  for (int64_t i = 0; i < o.n_layers; ++i) {
    const bool first_moe = o.is_moe_layer(i) && !seen_moe;
    seen_moe = seen_moe || o.is_moe_layer(i);
    blocks.push_back(TransformerBlock(o, i, first_moe, rope));
    layers->push_back(blocks.back());
  }
  norm = register_module("norm", RMSNorm(o.d_model, o.norm_eps));
}

MoETransformerImpl::MoETransformerImpl(MoETransformerOptions options) : options_(std::move(options)) {
  options_.validate();
  const MoETransformerOptions& o = options_;
  rope_ = std::make_shared<const RotaryEmbedding>(o.head_dim(), o.max_seq_len, o.rope_theta);
  model = register_module("model", Decoder(o, rope_));
  lm_head = register_module("lm_head", o.tie_embeddings ? LMHead(model->embed_tokens->weight)
                                                        : LMHead(o.d_model, o.vocab_size));
  reset_parameters();
  if (o.dtype != "float32") to(parse_dtype(o.dtype));
}

void MoETransformerImpl::reset_parameters() {
  const MoETransformerOptions& o = options_;
  // Note [Residual-output init]: every block adds two projections into the residual stream
  // (o_proj, the FFN's down projection). With all weights at std, the stream's variance
  // grows with depth; GPT-2 and Megatron draw those projections with
  // std / sqrt(2 n_layers) so the sum over 2 n_layers additions stays at the scale of one.
  // Hugging Face Llama does not (its init is irrelevant once a checkpoint is loaded).
  const double residual_std =
      o.scale_residual_init ? o.init_std / std::sqrt(2.0 * static_cast<double>(o.n_layers)) : o.init_std;
  const torch::NoGradGuard no_grad;
  model->embed_tokens->weight.normal_(0.0, o.init_std);
  for (auto& block : model->blocks) block->reset_parameters(o.init_std, residual_std);
  model->norm->reset_parameters();
  if (!o.tie_embeddings) lm_head->weight.normal_(0.0, o.init_std);
}

std::string MoETransformerImpl::unit_name(int64_t i) const {
  TORCH_CHECK_INDEX(i >= 0 && i < num_units(), "MoETransformer: unit ", i, " out of range [0, ",
                    num_units(), ")");
  if (i == 0) return "embed";
  if (i == num_units() - 1) return "head";
  return "blocks." + std::to_string(i - 1);
}

std::vector<UnitParameter> MoETransformerImpl::unit_parameters(int64_t i) {
  TORCH_CHECK_INDEX(i >= 0 && i < num_units(), "MoETransformer: unit ", i, " out of range [0, ",
                    num_units(), ")");
  std::vector<UnitParameter> out;
  const UnitParameter embed{"model.embed_tokens.weight", model->embed_tokens->weight, false};
  if (i == 0) {
    out.push_back(embed);
  } else if (i == num_units() - 1) {
    out.push_back({"model.norm.weight", model->norm->weight, false});
    // Tied: the head reads the embedding matrix, under its first name.
    out.push_back(options_.tie_embeddings ? embed
                                          : UnitParameter{"lm_head.weight", lm_head->weight, false});
  } else {
    TransformerBlock& block = model->blocks[i - 1];
    append_parameters(out, *block, "model.layers." + std::to_string(i - 1) + ".", block->is_moe());
  }
  return out;
}

void MoETransformerImpl::check_input_ids(const at::Tensor& ids) const {
  const at::Tensor& w = model->embed_tokens->weight;
  TORCH_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == at::kLong,
              "MoETransformer: expected input_ids of shape [B, S] and dtype int64, got ",
              ids.defined() ? ids.sizes() : at::IntArrayRef{}, " ",
              ids.defined() ? c10::toString(ids.scalar_type()) : "undefined");
  TORCH_CHECK(ids.size(1) >= 1 && ids.size(1) <= options_.max_seq_len,
              "MoETransformer: input_ids has sequence length ", ids.size(1),
              "; expected 1 .. max_seq_len = ", options_.max_seq_len, " (model.max_seq_len)");
  TORCH_CHECK(ids.device() == w.device(), "MoETransformer: expected input_ids on the model's "
              "device ", w.device(), ", got ", ids.device());
  // On the device, without a host sync (a CUDA device assert carries the same message).
  at::_assert_async(((ids >= 0) & (ids < options_.vocab_size)).all(),
                    "MoETransformer: input_ids must be in [0, vocab_size) (model.vocab_size); "
                    "an id is negative or >= vocab_size");
}

at::Tensor MoETransformerImpl::head(const at::Tensor& hidden_BSd, const at::Tensor& targets,
                                    at::Tensor* logits_out) {
  at::Tensor logits_BSV = lm_head(model->norm(hidden_BSd));
  if (logits_out != nullptr) *logits_out = logits_BSV;
  if (!targets.defined()) return at::Tensor();
  TORCH_CHECK(targets.dim() == 2 && targets.scalar_type() == at::kLong &&
                  targets.size(0) == hidden_BSd.size(0) && targets.size(1) == hidden_BSd.size(1),
              "MoETransformer: expected targets of dtype int64 and shape [", hidden_BSd.size(0),
              ", ", hidden_BSd.size(1), "] (like input_ids), got ", targets.sizes(), " ",
              c10::toString(targets.scalar_type()));
  TORCH_CHECK(targets.device() == logits_BSV.device(), "MoETransformer: expected targets on the "
              "model's device ", logits_BSV.device(), ", got ", targets.device());
  const int64_t V = options_.vocab_size;
  at::_assert_async((targets < V).all(), "MoETransformer: targets must be < vocab_size "
                    "(model.vocab_size); negative targets are ignored");
  // Cross-entropy in at least float32. log_softmax keeps only its output for backward, so
  // unless the caller holds the logits, one [B*S, V] tensor stays alive.
  const at::ScalarType loss_type =
      logits_BSV.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor logp_NV = at::log_softmax(logits_BSV.view({-1, V}), -1, loss_type);
  logits_BSV.reset();
  const at::Tensor valid_N = targets.reshape(-1) >= 0;
  const at::Tensor safe_N = at::where(valid_N, targets.reshape(-1), -100);
  const at::Tensor nll_sum = at::nll_loss(logp_NV, safe_N, {}, at::Reduction::Sum, -100);
  // Mean over the counted targets; 0 (not NaN) when every target is ignored.
  return nll_sum / valid_N.sum().clamp_min(1).to(loss_type);
}

UnitStep MoETransformerImpl::run_unit(int64_t i, const std::vector<at::Tensor>& inputs,
                                      const UnitBatch& batch) {
  TORCH_CHECK_INDEX(i >= 0 && i < num_units(), "MoETransformer: unit ", i, " out of range [0, ",
                    num_units(), ")");
  UnitStep step;
  if (i == 0) {
    check_input_ids(batch.input_ids);
    step.outputs = {model->embed_tokens(batch.input_ids), at::Tensor()};
    return step;
  }
  TORCH_CHECK(inputs.size() == 2 && inputs[0].defined(), "MoETransformer: unit ", i, " (",
              unit_name(i), ") expects the previous unit's 2 outputs {hidden, router logits}, got ",
              inputs.size(), " tensors");
  if (i == num_units() - 1) {
    TORCH_CHECK(batch.targets.defined(), "MoETransformer: the head unit needs batch.targets");
    step.outputs = {head(inputs[0], batch.targets, nullptr)};
    return step;
  }
  TransformerBlock& block = model->blocks[i - 1];
  BlockOutput out = block(inputs[0], inputs[1]);
  if (!out.moe) {
    step.outputs = {out.hidden, inputs[1]};  // the router logits pass through dense blocks
    return step;
  }
  const MoEOutput& m = *out.moe;
  step.outputs = {out.hidden, options_.moe.gating_residual ? m.router_logits : at::Tensor()};
  step.aux_loss = m.aux_loss;
  step.stats = {{"expert_counts", m.expert_counts.detach()},
                {"expert_load", m.expert_load.detach()},
                {"num_dropped", m.num_dropped.detach()},
                {"real_experts_per_token", m.real_experts_per_token.detach()}};
  return step;
}

TransformerOutput MoETransformerImpl::forward(const at::Tensor& input_ids,
                                              const std::optional<at::Tensor>& targets,
                                              bool return_logits) {
  const UnitBatch batch{input_ids, targets.has_value() ? *targets : at::Tensor()};
  TransformerOutput result;
  std::vector<at::Tensor> state;
  const int64_t head_unit = num_units() - 1;
  for (int64_t i = 0; i < head_unit; ++i) {
    UnitStep step = run_unit(i, state, batch);
    state = std::move(step.outputs);
    if (step.aux_loss.defined()) {
      result.aux_loss = result.aux_loss.defined() ? result.aux_loss + step.aux_loss : step.aux_loss;
      MoEBlockStats stats{i - 1, {{"aux_loss", step.aux_loss.detach()}}};
      for (auto& s : step.stats) stats.values.push_back(std::move(s));
      result.moe_stats.push_back(std::move(stats));
    }
  }
  // The head unit's computation, asked for the logits too (run_unit(head) returns the loss
  // only, as the UnitSequence contract says).
  const bool want_logits = !batch.targets.defined() || return_logits;
  result.loss = head(state[0], batch.targets, want_logits ? &result.logits : nullptr);
  if (!result.aux_loss.defined()) {
    const at::Tensor& w = model->norm->weight;
    result.aux_loss = at::zeros({}, w.options().dtype(w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  }
  return result;
}

std::vector<MoELayer> MoETransformerImpl::moe_layers() const {
  std::vector<MoELayer> out;
  for (const auto& block : model->blocks) {
    if (block->is_moe()) out.push_back(block->moe);
  }
  return out;
}

void MoETransformerImpl::update_selection_bias() {
  for (auto& layer : moe_layers()) layer->update_selection_bias();
}

void MoETransformerImpl::pretty_print(std::ostream& stream) const {
  stream << "MoETransformer(n_layers=" << options_.n_layers << ", d_model=" << options_.d_model
         << ", vocab_size=" << options_.vocab_size << ", moe_blocks=" << moe_layers().size() << ")";
}

}  // namespace switchyard::nn
