// MoETransformerOptions: the shape of the decoder-only language model, as one plain struct.
//
// The fields are the YAML `model:` keys (docs/configuration.md, same names and types) plus
// the options of its MoE blocks (`moe:`, see moe_options.h) and one initialisation choice
// that has no YAML key. from_config() fills it from a Config; C++ and Python users may also
// fill it by hand. The modules never see YAML.
#pragma once

#include <cstdint>
#include <string>

#include "switchyard/nn/moe_options.h"

namespace switchyard::config {
struct Config;
}

namespace switchyard::nn {

struct MoETransformerOptions {
  int64_t vocab_size = 32000;
  int64_t d_model = 512;
  int64_t n_layers = 8;
  int64_t n_heads = 8;
  int64_t n_kv_heads = 0;  // 0 = n_heads (plain multi-head attention)
  bool qkv_bias = false;   // q/k/v projections with a bias (Qwen2); o_proj never has one
  int64_t ffn_hidden = 2048;
  int64_t max_seq_len = 1024;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  int64_t moe_layer_freq = 1;  // 0 = a dense model
  int64_t first_k_dense = 0;
  std::string dtype = "float32";  // of the parameters: float32, float64, bfloat16, float16
  double init_std = 0.02;
  // Scale the init std of the projections that write into the residual stream (o_proj and
  // every FFN's down projection) by 1/sqrt(2 * n_layers), as GPT-2 and Megatron do, so the
  // residual stream's variance at init does not grow with depth. Not a YAML key.
  bool scale_residual_init = true;
  // The MoE blocks. Its d_model and init_std must equal the model's (from_config and the
  // Python constructor copy them).
  MoELayerOptions moe;

  int64_t kv_heads() const { return n_kv_heads == 0 ? n_heads : n_kv_heads; }
  int64_t head_dim() const { return d_model / n_heads; }
  // Block `layer` (0-based) is MoE when layer >= first_k_dense and layer is a multiple of
  // moe_layer_freq (never when moe_layer_freq is 0) -- config::ModelConfig::is_moe_layer.
  bool is_moe_layer(int64_t layer) const {
    return moe_layer_freq > 0 && layer >= first_k_dense && layer % moe_layer_freq == 0;
  }
  bool has_moe_layers() const;

  // Throws c10::ValueError naming the first invalid field and its value.
  void validate() const;
  // "MoETransformerOptions(vocab_size=32000, ..., moe=MoELayerOptions(...))".
  std::string to_string() const;
};

// The model a run's config describes: `model:` and `moe:`.
MoETransformerOptions transformer_options_from_config(const config::Config& config);

}  // namespace switchyard::nn

// X(type, name) for every field of MoETransformerOptions that is also a key of the YAML
// model: section (same name, same type): transformer_options_from_config copies exactly these.
#define SWITCHYARD_TRANSFORMER_CONFIG_FIELDS(X) \
  X(int64_t, vocab_size)                        \
  X(int64_t, d_model)                           \
  X(int64_t, n_layers)                          \
  X(int64_t, n_heads)                           \
  X(int64_t, n_kv_heads)                        \
  X(bool, qkv_bias)                             \
  X(int64_t, ffn_hidden)                        \
  X(int64_t, max_seq_len)                       \
  X(double, rope_theta)                         \
  X(double, norm_eps)                           \
  X(bool, tie_embeddings)                       \
  X(int64_t, moe_layer_freq)                    \
  X(int64_t, first_k_dense)                     \
  X(std::string, dtype)                         \
  X(double, init_std)

// X(type, name) for every scalar field, in declaration order (moe is bound separately).
#define SWITCHYARD_TRANSFORMER_OPTION_FIELDS(X) \
  SWITCHYARD_TRANSFORMER_CONFIG_FIELDS(X) X(bool, scale_residual_init)
