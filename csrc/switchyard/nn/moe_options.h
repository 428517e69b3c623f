// MoELayerOptions: everything that shapes one MoE block, as one plain struct.
//
// The fields are the YAML `moe:` keys (docs/configuration.md) plus the hidden size and the
// initialisation scale, which come from `model:`. from_config() fills it from a Config;
// C++ and Python users may also fill it by hand. The modules never see YAML.
//
// SWITCHYARD_MOE_OPTION_FIELDS lists every field once, so the Python binding (attributes,
// keyword arguments) and the printed form follow the struct without a second list.
#pragma once

#include <cstdint>
#include <string>

namespace switchyard::config {
struct Config;
}

namespace switchyard::nn {

struct MoELayerOptions {
  int64_t d_model = 512;
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t ffn_hidden = 1024;
  std::string activation = "swiglu";  // "swiglu" or "gelu"
  std::string router = "topk";        // "topk" or "expert_choice"
  std::string score_func = "softmax";
  bool renormalize = true;
  double scaling_factor = 1.0;
  int64_t num_groups = 1;
  int64_t topk_groups = 0;
  std::string group_score = "max";
  double capacity_factor = 0.0;
  std::string drop_policy = "position";
  int64_t num_shared_experts = 0;
  int64_t shared_ffn_hidden = 0;  // 0 = num_shared_experts * ffn_hidden
  bool shared_expert_gate = false;
  int64_t num_null_experts = 0;
  int64_t num_zero_experts = 0;
  int64_t num_copy_experts = 0;
  int64_t num_constant_experts = 0;
  bool gating_residual = false;
  double jitter_eps = 0.0;
  double aux_loss_coeff = 0.01;
  double z_loss_coeff = 0.0;
  double seq_aux_loss_coeff = 0.0;
  double bias_update_rate = 0.0;
  bool selection_bias = false;  // also implied by bias_update_rate > 0
  double init_std = 0.02;

  // Router outputs: routed experts, then null experts, then zero, copy, constant experts.
  int64_t num_router_outputs() const {
    return num_experts + num_null_experts + num_zero_experts + num_copy_experts +
           num_constant_experts;
  }
  int64_t first_zero_compute_expert() const { return num_experts + num_null_experts; }
  int64_t resolved_shared_ffn_hidden() const {
    return shared_ffn_hidden > 0 ? shared_ffn_hidden : num_shared_experts * ffn_hidden;
  }
  bool has_selection_bias() const { return selection_bias || bias_update_rate > 0; }

  // Throws switchyard::Error naming the first invalid field and its value.
  void validate() const;
  // "MoELayerOptions(d_model=512, num_experts=8, ...)".
  std::string to_string() const;
};

// The options of the MoE blocks of a run: the `moe:` section, d_model and init_std from
// `model:`.
MoELayerOptions moe_options_from_config(const config::Config& config);

}  // namespace switchyard::nn

// X(type, name) for every field of MoELayerOptions that is also a key of the YAML moe:
// section (same name, same type): moe_options_from_config copies exactly these.
#define SWITCHYARD_MOE_CONFIG_FIELDS(X)                                                 \
  X(int64_t, num_experts)                                                               \
  X(int64_t, top_k)                                                                     \
  X(int64_t, ffn_hidden)                                                                \
  X(std::string, activation)                                                            \
  X(std::string, router)                                                                \
  X(std::string, score_func)                                                            \
  X(bool, renormalize)                                                                  \
  X(double, scaling_factor)                                                             \
  X(int64_t, num_groups)                                                                \
  X(int64_t, topk_groups)                                                               \
  X(std::string, group_score)                                                           \
  X(double, capacity_factor)                                                            \
  X(std::string, drop_policy)                                                           \
  X(int64_t, num_shared_experts)                                                        \
  X(int64_t, shared_ffn_hidden)                                                         \
  X(bool, shared_expert_gate)                                                           \
  X(int64_t, num_null_experts)                                                          \
  X(int64_t, num_zero_experts)                                                          \
  X(int64_t, num_copy_experts)                                                          \
  X(int64_t, num_constant_experts)                                                      \
  X(bool, gating_residual)                                                              \
  X(double, jitter_eps)                                                                 \
  X(double, aux_loss_coeff)                                                             \
  X(double, z_loss_coeff)                                                               \
  X(double, seq_aux_loss_coeff)                                                         \
  X(double, bias_update_rate)                                                           \
  X(bool, selection_bias)

// X(type, name) for every field of MoELayerOptions, in declaration order.
#define SWITCHYARD_MOE_OPTION_FIELDS(X) \
  X(int64_t, d_model) SWITCHYARD_MOE_CONFIG_FIELDS(X) X(double, init_std)
