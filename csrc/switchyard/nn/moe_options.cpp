// MoELayerOptions: validation, printing, and the mapping from a run's Config.
#include "switchyard/nn/moe_options.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <initializer_list>
#include <sstream>

#include "switchyard/config/config.h"

namespace switchyard::nn {

namespace {

void check_one_of(const char* field, const std::string& value,
                  std::initializer_list<const char*> allowed) {
  std::ostringstream list;
  for (const char* a : allowed) {
    if (value == a) return;
    list << (list.tellp() > 0 ? ", " : "") << "'" << a << "'";
  }
  TORCH_CHECK_VALUE(false, "MoELayerOptions: ", field, " must be one of ", list.str(),
                    ", got '", value, "'");
}

void check_at_least(const char* field, int64_t value, int64_t lowest) {
  TORCH_CHECK_VALUE(value >= lowest, "MoELayerOptions: ", field, " must be >= ", lowest,
                    ", got ", value);
}

void check_non_negative(const char* field, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value >= 0, "MoELayerOptions: ", field,
                    " must be finite and >= 0, got ", value);
}

}  // namespace

void MoELayerOptions::validate() const {
  check_at_least("d_model", d_model, 1);
  check_at_least("num_experts", num_experts, 1);
  check_at_least("top_k", top_k, 1);
  check_at_least("ffn_hidden", ffn_hidden, 1);
  check_one_of("activation", activation, {"swiglu", "gelu"});
  check_one_of("router", router, {"topk", "expert_choice"});
  check_one_of("score_func", score_func, {"softmax", "sigmoid"});
  check_one_of("group_score", group_score, {"max", "top2_sum", "balanced"});
  check_one_of("drop_policy", drop_policy, {"position", "score"});
  TORCH_CHECK_VALUE(std::isfinite(scaling_factor) && scaling_factor > 0,
                    "MoELayerOptions: scaling_factor must be finite and > 0, got ",
                    scaling_factor);
  check_at_least("num_groups", num_groups, 1);
  TORCH_CHECK_VALUE(num_experts % num_groups == 0, "MoELayerOptions: num_groups ", num_groups,
                    " must divide num_experts ", num_experts);
  TORCH_CHECK_VALUE(topk_groups >= 0 && topk_groups <= num_groups,
                    "MoELayerOptions: topk_groups must be in [0, num_groups=", num_groups,
                    "], got ", topk_groups);
  check_non_negative("capacity_factor", capacity_factor);
  for (const auto& [field, value] :
       {std::pair{"num_shared_experts", num_shared_experts},
        std::pair{"shared_ffn_hidden", shared_ffn_hidden},
        std::pair{"num_null_experts", num_null_experts},
        std::pair{"num_zero_experts", num_zero_experts},
        std::pair{"num_copy_experts", num_copy_experts},
        std::pair{"num_constant_experts", num_constant_experts}}) {
    check_at_least(field, value, 0);
  }
  TORCH_CHECK_VALUE(!shared_expert_gate || num_shared_experts > 0,
                    "MoELayerOptions: shared_expert_gate needs num_shared_experts > 0");
  TORCH_CHECK_VALUE(std::isfinite(jitter_eps) && jitter_eps >= 0 && jitter_eps < 1,
                    "MoELayerOptions: jitter_eps must be in [0, 1), got ", jitter_eps);
  check_non_negative("aux_loss_coeff", aux_loss_coeff);
  check_non_negative("z_loss_coeff", z_loss_coeff);
  check_non_negative("seq_aux_loss_coeff", seq_aux_loss_coeff);
  check_non_negative("bias_update_rate", bias_update_rate);
  TORCH_CHECK_VALUE(std::isfinite(init_std) && init_std > 0,
                    "MoELayerOptions: init_std must be finite and > 0, got ", init_std);
  if (router == "topk") {
    TORCH_CHECK_VALUE(top_k <= num_router_outputs(), "MoELayerOptions: top_k ", top_k,
                      " exceeds the ", num_router_outputs(),
                      " router outputs (routed + null + zero-computation experts)");
  } else {
    // Expert choice: every expert picks its tokens, so there is no per-token choice among
    // special experts, no groups and no per-token balancing terms.
    TORCH_CHECK_VALUE(capacity_factor > 0, "MoELayerOptions: router 'expert_choice' needs "
                      "capacity_factor > 0 (each expert takes capacity_factor * T * top_k / "
                      "num_experts tokens), got ", capacity_factor);
    TORCH_CHECK_VALUE(num_router_outputs() == num_experts && num_groups == 1 &&
                          !has_selection_bias(),
                      "MoELayerOptions: router 'expert_choice' supports neither null, zero, "
                      "copy or constant experts, nor expert groups, nor a selection bias");
  }
}

std::string MoELayerOptions::to_string() const {
  std::ostringstream os;
  os << std::boolalpha << "MoELayerOptions(";
  const char* sep = "";
#define SY_PRINT_FIELD(type, name)                                                   \
  os << sep << #name << "=" << (std::is_same_v<type, std::string> ? "'" : "") << name \
     << (std::is_same_v<type, std::string> ? "'" : "");                               \
  sep = ", ";
  SWITCHYARD_MOE_OPTION_FIELDS(SY_PRINT_FIELD)
#undef SY_PRINT_FIELD
  os << ")";
  return os.str();
}

MoELayerOptions moe_options_from_config(const config::Config& config) {
  const config::MoeConfig& m = config.moe;
  MoELayerOptions o;
  o.d_model = config.model.d_model;
  o.init_std = config.model.init_std;
#define SY_COPY_FIELD(type, name) o.name = m.name;
  SWITCHYARD_MOE_CONFIG_FIELDS(SY_COPY_FIELD)
#undef SY_COPY_FIELD
  o.validate();
  return o;
}

}  // namespace switchyard::nn
