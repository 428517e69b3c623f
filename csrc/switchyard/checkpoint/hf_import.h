// Reading a Hugging Face Llama-family checkpoint (docs/huggingface.md is the user's page).
//
// A Hugging Face model directory holds config.json and the weights, either one
// model.safetensors or shards listed by model.safetensors.index.json. LlamaForCausalLM,
// MistralForCausalLM and Qwen2ForCausalLM are all Llama's decoder (pre-norm blocks, RoPE,
// grouped-query attention, SwiGLU FFN, RMSNorm) and switchyard's dense MoETransformer uses
// Llama's parameter names, so importing is:
//
//   1. map config.json onto our model: keys, field by field; any field whose value would make
//      the source compute something our model does not (another activation, RoPE scaling, a
//      sliding window shorter than the context, biases we do not have, ...) is refused,
//      naming the config.json field and its value;
//   2. check every tensor against the shapes config.json implies (all headers first, before a
//      byte of data is read): a missing tensor, a shape that disagrees or a tensor we would
//      not use is an error naming it; only an explicit list of derived buffers (RoPE
//      inv_freq) and a tied lm_head.weight are skipped, and reported as ignored;
//   3. read the tensors, keep their names (they are already ours).
//
// The result is what a caller needs to build and fill the model: `model.key=value` config
// overrides and a state dict in our names. Upcycling (checkpoint/upcycle.h) starts from it.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace switchyard::checkpoint {

// config.json as our model: section (the dense model it describes).
struct HfModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
  int64_t vocab_size = 0;
  int64_t d_model = 0;        // hidden_size
  int64_t n_layers = 0;       // num_hidden_layers
  int64_t n_heads = 0;        // num_attention_heads
  int64_t n_kv_heads = 0;     // num_key_value_heads (absent or null: num_attention_heads)
  int64_t ffn_hidden = 0;     // intermediate_size
  int64_t max_seq_len = 0;    // max_position_embeddings
  double rope_theta = 10000;  // rope_theta, or rope_parameters.rope_theta (transformers 5)
  double norm_eps = 1e-6;     // rms_norm_eps
  bool tie_embeddings = false;  // tie_word_embeddings
  bool qkv_bias = false;        // Qwen2: q/k/v projections have biases
  std::optional<double> init_std;  // initializer_range, when given
  std::string dtype;               // the stored dtype from config.json ("bfloat16"), or ""
  // config.json fields read and found harmless for the model's function (token ids,
  // use_cache, transformers_version, ...) or not known to us; reported, never an error.
  std::vector<std::string> ignored_fields;

  // "model.vocab_size=32000", ... -- every model: key the checkpoint determines, including
  // model.moe_layer_freq=0 (it is a dense model) and model.first_k_dense=0. Values are YAML.
  std::vector<std::string> overrides() const;
};

// Reads and checks <dir>/config.json. Throws c10::ValueError naming the field on anything
// unsupported.
HfModelConfig read_hf_config(const std::string& dir);

struct HfImportOptions {
  // Convert every tensor to this dtype; nullopt keeps the stored dtype (e.g. bfloat16).
  std::optional<at::ScalarType> dtype;
};

struct HfImport {
  HfModelConfig config;
  std::vector<std::string> overrides;       // config.overrides()
  std::map<std::string, at::Tensor> state;  // our parameter names, CPU tensors; with tied
                                            // embeddings lm_head.weight is the embedding
                                            // tensor itself (as MoETransformer's state_dict)
  std::vector<std::string> ignored;         // source tensors skipped on purpose
  std::vector<std::string> files;           // the safetensors files read
};

// Imports the checkpoint in `dir` (config.json + model.safetensors, or shards listed by
// model.safetensors.index.json). Throws c10::ValueError naming the field or tensor (with the
// expected and actual shape) when the checkpoint is unsupported or inconsistent; nothing is
// read into memory before every header has been checked.
HfImport import_hf_checkpoint(const std::string& dir, const HfImportOptions& options = {});

}  // namespace switchyard::checkpoint
