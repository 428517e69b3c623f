// MoETransformerOptions: validation, printing, and the mapping from a run's Config.
#include "switchyard/nn/transformer_options.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>
#include <type_traits>

#include "switchyard/config/config.h"

namespace switchyard::nn {

namespace {

// Messages name the field and, in parentheses, the YAML key it comes from.
void check_at_least(const char* field, int64_t value, int64_t lowest) {
  TORCH_CHECK_VALUE(value >= lowest, "MoETransformerOptions: ", field, " (model.", field,
                    ") must be >= ", lowest, ", got ", value);
}

void check_positive(const char* field, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value > 0, "MoETransformerOptions: ", field,
                    " (model.", field, ") must be finite and > 0, got ", value);
}

}  // namespace

bool MoETransformerOptions::has_moe_layers() const {
  for (int64_t i = 0; i < n_layers; ++i) {
    if (is_moe_layer(i)) return true;
  }
  return false;
}

void MoETransformerOptions::validate() const {
  check_at_least("vocab_size", vocab_size, 1);
  check_at_least("d_model", d_model, 1);
  check_at_least("n_layers", n_layers, 1);
  check_at_least("n_heads", n_heads, 1);
  check_at_least("n_kv_heads", n_kv_heads, 0);
  check_at_least("ffn_hidden", ffn_hidden, 1);
  check_at_least("max_seq_len", max_seq_len, 1);
  check_at_least("moe_layer_freq", moe_layer_freq, 0);
  check_at_least("first_k_dense", first_k_dense, 0);
  check_positive("rope_theta", rope_theta);
  check_positive("norm_eps", norm_eps);
  check_positive("init_std", init_std);
  TORCH_CHECK_VALUE(d_model % n_heads == 0, "MoETransformerOptions: n_heads = ", n_heads,
                    " (model.n_heads) must divide d_model = ", d_model, " (model.d_model)");
  TORCH_CHECK_VALUE(head_dim() % 2 == 0, "MoETransformerOptions: the head size d_model / n_heads = ",
                    d_model, " / ", n_heads, " = ", head_dim(),
                    " must be even (rotary embeddings rotate pairs; model.d_model, model.n_heads)");
  TORCH_CHECK_VALUE(n_heads % kv_heads() == 0, "MoETransformerOptions: n_kv_heads = ", n_kv_heads,
                    " (model.n_kv_heads) must divide n_heads = ", n_heads, " (model.n_heads)");
  TORCH_CHECK_VALUE(dtype == "float32" || dtype == "float64" || dtype == "bfloat16" ||
                        dtype == "float16",
                    "MoETransformerOptions: dtype (model.dtype) must be one of 'float32', "
                    "'float64', 'bfloat16', 'float16', got '", dtype, "'");
  if (has_moe_layers()) {
    moe.validate();
    TORCH_CHECK_VALUE(moe.d_model == d_model, "MoETransformerOptions: moe.d_model = ", moe.d_model,
                      " must equal d_model = ", d_model, " (model.d_model)");
    TORCH_CHECK_VALUE(moe.init_std == init_std, "MoETransformerOptions: moe.init_std = ",
                      moe.init_std, " must equal init_std = ", init_std, " (model.init_std)");
  }
}

std::string MoETransformerOptions::to_string() const {
  std::ostringstream os;
  os << std::boolalpha << "MoETransformerOptions(";
#define SY_PRINT_FIELD(type, name)                                                   \
  os << #name << "=" << (std::is_same_v<type, std::string> ? "'" : "") << name \
     << (std::is_same_v<type, std::string> ? "'" : "") << ", ";
  SWITCHYARD_TRANSFORMER_OPTION_FIELDS(SY_PRINT_FIELD)
#undef SY_PRINT_FIELD
  os << "moe=" << moe.to_string() << ")";
  return os.str();
}

MoETransformerOptions transformer_options_from_config(const config::Config& config) {
  const config::ModelConfig& m = config.model;
  MoETransformerOptions o;
#define SY_COPY_FIELD(type, name) o.name = m.name;
  SWITCHYARD_TRANSFORMER_CONFIG_FIELDS(SY_COPY_FIELD)
#undef SY_COPY_FIELD
  o.moe = moe_options_from_config(config);
  o.validate();
  return o;
}

}  // namespace switchyard::nn
