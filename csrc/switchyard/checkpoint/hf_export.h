// Writing a switchyard MoE checkpoint as a Hugging Face model directory (docs/huggingface.md).
//
// Two targets, the MoE decoders transformers knows that our MoETransformer can be exactly:
//
//   mixtral    MixtralForCausalLM: every block MoE, softmax top-k with renormalised weights,
//              no shared experts, no attention biases.
//   qwen2_moe  Qwen2MoeForCausalLM: softmax top-k with or without renormalisation
//              (norm_topk_prob), one sigmoid-gated shared expert per MoE block, dense blocks
//              anywhere (mlp_only_layers), optional q/k/v biases.
//
// The tensors are written the way the published checkpoints of these models are (one matrix
// per expert: block_sparse_moe.experts.{j}.w1/w2/w3, mlp.experts.{j}.gate_proj/...), which
// transformers 4 and 5 (it fuses them on load), vLLM and other readers all accept.
//
// Anything the target cannot express (sigmoid scores, expert choice, null or constant
// experts, a gating residual, selection biases, group-limited routing, capacity drops, ...)
// is refused naming our config key. Every tensor of the checkpoint must land in the output
// (a leftover is an error), and the output appears complete or not at all: it is written
// into "<out>.partial-<pid>" and renamed at the end.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/nn/transformer_options.h"

namespace switchyard::checkpoint {

enum class HfFormat { kMixtral, kQwen2Moe };

// "mixtral" / "qwen2_moe" <-> HfFormat; an unknown name throws c10::ValueError listing both.
HfFormat hf_format_from_string(const std::string& name);
std::string to_string(HfFormat format);

struct HfExportOptions {
  HfFormat format = HfFormat::kMixtral;
  // A model trained with moe.capacity_factor > 0 dropped tokens beyond each expert's
  // capacity; transformers' models never drop. Refused unless this is set (the exported
  // model then routes every token, i.e. the same weights without the capacity limit).
  bool ignore_capacity = false;
  // Convert every tensor to this dtype; nullopt keeps the checkpoint's (float32 masters).
  std::optional<at::ScalarType> dtype;
};

// What the conversion produces, without touching the disk.
struct HfExportPlan {
  std::string config_json;                                   // config.json's text
  std::vector<std::pair<std::string, at::Tensor>> tensors;   // model.safetensors, in order
  std::vector<std::string> notes;  // settings that have no effect on inference, and what became of them
};

// config.json's text for the model (torch_dtype left out) and the notes, after refusing,
// naming our config key, what the format cannot express. Reads no tensor.
std::string hf_export_config(const nn::MoETransformerOptions& model, const HfExportOptions& options,
                             std::vector<std::string>* notes = nullptr);

// Maps a model (its options) and its full state (checkpoint::read_full_state's names) onto
// the format. Throws c10::ValueError naming our config key when the format cannot express
// the model, or the tensor when the state does not match the options (missing, misshapen or
// left over).
HfExportPlan plan_hf_export(const nn::MoETransformerOptions& model, std::map<std::string, at::Tensor> state,
                            const HfExportOptions& options);

struct HfExportResult {
  std::string out_dir;
  std::string architecture;
  int64_t num_tensors = 0;
  std::vector<std::string> notes;
};

// Reads the checkpoint `checkpoint_path` (a step directory or a root: its newest one) and
// writes `out_dir`/config.json and `out_dir`/model.safetensors. `out_dir` must not exist, or
// be an empty directory. On any error nothing is left behind.
HfExportResult export_hf_checkpoint(const std::string& checkpoint_path, const std::string& out_dir,
                                    const HfExportOptions& options);

}  // namespace switchyard::checkpoint
