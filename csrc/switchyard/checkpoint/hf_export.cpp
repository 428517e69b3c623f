#include "switchyard/checkpoint/hf_export.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "switchyard/checkpoint/checkpoint.h"
#include "switchyard/checkpoint/file_io.h"
#include "switchyard/checkpoint/safetensors.h"
#include "switchyard/config/config.h"

namespace switchyard::checkpoint {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

std::string dims(at::IntArrayRef shape) {
  std::ostringstream os;
  os << shape;
  return os.str();
}

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: TORCH_CHECK_VALUE(false, "hf_export: parameters of dtype ", t, " cannot be exported");
  }
  return "";  // unreachable
}

// The state, consumed tensor by tensor: whatever is not taken is a leftover.
class StateTaker {
 public:
  StateTaker(std::map<std::string, at::Tensor> state, std::optional<at::ScalarType> dtype)
      : state_(std::move(state)), dtype_(dtype) {}

  at::Tensor take(const std::string& name, std::vector<int64_t> shape) {
    const auto it = state_.find(name);
    TORCH_CHECK_VALUE(it != state_.end(), "hf_export: the checkpoint lacks tensor '", name, "' (expected shape ",
                      dims(shape), ")");
    at::Tensor t = std::move(it->second);
    state_.erase(it);
    TORCH_CHECK_VALUE(t.sizes().vec() == shape, "hf_export: tensor '", name, "' has shape ", dims(t.sizes()),
                      ", expected ", dims(shape), " from the checkpoint's config");
    if (dtype_ && t.scalar_type() != *dtype_) t = t.to(*dtype_);
    if (dtype_name_.empty()) dtype_name_ = dtype_name(t.scalar_type());
    return t;
  }
  bool has(const std::string& name) const { return state_.count(name) > 0; }
  void drop(const std::string& name) { state_.erase(name); }

  void check_empty() const {
    if (state_.empty()) return;
    std::ostringstream os;
    size_t i = 0;
    for (const auto& [name, _] : state_) {
      if (i == 5) {
        os << ", ... (" << state_.size() << " in all)";
        break;
      }
      os << (i++ ? ", " : "") << "'" << name << "'";
    }
    TORCH_CHECK_VALUE(false, "hf_export: the checkpoint holds tensor(s) the exported model has no place for: ", os.str());
  }
  const std::string& dtype() const { return dtype_name_; }

 private:
  std::map<std::string, at::Tensor> state_;
  std::optional<at::ScalarType> dtype_;
  std::string dtype_name_;
};

// Refuses, naming our config key, everything neither target can express.
void check_common(const nn::MoETransformerOptions& m, const HfExportOptions& options, std::vector<std::string>& notes) {
  const nn::MoELayerOptions& e = m.moe;
  const std::string target = to_string(options.format);
  const auto refuse = [&](bool bad, const std::string& key, const std::string& value, const std::string& why) {
    TORCH_CHECK_VALUE(!bad, "hf_export: ", key, " = ", value, " cannot be exported as ", target, ": ", why);
  };
  refuse(!m.has_moe_layers(), "model.moe_layer_freq", std::to_string(m.moe_layer_freq),
         "the model has no MoE blocks (a dense model is a LlamaForCausalLM: its state dict already has Llama's names)");
  refuse(e.router != "topk", "moe.router", e.router, "transformers' MoE blocks route tokens to experts (topk)");
  refuse(e.score_func != "softmax", "moe.score_func", e.score_func, "the target's router scores are a softmax");
  refuse(e.activation != "swiglu", "moe.activation", e.activation, "the target's experts are SwiGLU");
  refuse(e.scaling_factor != 1.0, "moe.scaling_factor", num(e.scaling_factor),
         "the target does not scale the routed experts' output");
  refuse(e.num_groups != 1, "moe.num_groups", std::to_string(e.num_groups), "the target has no group-limited routing");
  refuse(e.num_null_experts > 0, "moe.num_null_experts", std::to_string(e.num_null_experts), "the target has no null experts");
  refuse(e.num_zero_experts > 0, "moe.num_zero_experts", std::to_string(e.num_zero_experts), "the target has no zero experts");
  refuse(e.num_copy_experts > 0, "moe.num_copy_experts", std::to_string(e.num_copy_experts), "the target has no copy experts");
  refuse(e.num_constant_experts > 0, "moe.num_constant_experts", std::to_string(e.num_constant_experts),
         "the target has no constant experts");
  refuse(e.gating_residual, "moe.gating_residual", "true", "the target's routers see only the hidden state");
  refuse(e.selection_bias, "moe.selection_bias", "true", "the target has no expert-selection bias");
  refuse(e.bias_update_rate > 0, "moe.bias_update_rate", num(e.bias_update_rate),
         "the target has no expert-selection bias (aux-loss-free balancing)");
  refuse(e.capacity_factor > 0 && !options.ignore_capacity, "moe.capacity_factor", num(e.capacity_factor),
         "the target never drops tokens; pass ignore_capacity (--ignore-capacity) to export the weights as a "
         "model that routes every token");
  if (e.capacity_factor > 0) {
    notes.push_back("moe.capacity_factor = " + num(e.capacity_factor) +
                    " ignored: the exported model routes every token (no capacity limit)");
  }
  if (e.jitter_eps > 0) notes.push_back("moe.jitter_eps: training-time router noise, not exported");
  if (e.z_loss_coeff > 0 || e.seq_aux_loss_coeff > 0) {
    notes.push_back("moe.z_loss_coeff / moe.seq_aux_loss_coeff: training losses the target does not have, not exported");
  }
}

// Attention, norms, embedding and head: the same names in every Llama-family model.
void take_attention(StateTaker& s, const nn::MoETransformerOptions& m, const std::string& p,
                    std::vector<std::pair<std::string, at::Tensor>>& out) {
  const int64_t d = m.d_model, q = m.n_heads * m.head_dim(), kv = m.kv_heads() * m.head_dim();
  for (const auto& [name, rows] : {std::pair<const char*, int64_t>{"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}}) {
    const std::string n = p + "self_attn." + name;
    out.emplace_back(n + ".weight", s.take(n + ".weight", {rows, d}));
    if (m.qkv_bias) out.emplace_back(n + ".bias", s.take(n + ".bias", {rows}));
  }
  out.emplace_back(p + "self_attn.o_proj.weight", s.take(p + "self_attn.o_proj.weight", {d, q}));
}

void take_dense_mlp(StateTaker& s, const std::string& from, const std::string& to, int64_t d, int64_t f,
                    std::vector<std::pair<std::string, at::Tensor>>& out) {
  out.emplace_back(to + "gate_proj.weight", s.take(from + "gate_proj.weight", {f, d}));
  out.emplace_back(to + "up_proj.weight", s.take(from + "up_proj.weight", {f, d}));
  out.emplace_back(to + "down_proj.weight", s.take(from + "down_proj.weight", {d, f}));
}

// Our stacked experts ([E, d, f] gate/up, [E, f, d] down: x @ W) as one nn.Linear weight per
// expert ([out, in]: the transpose), under the target's per-expert names.
void take_experts(StateTaker& s, const nn::MoETransformerOptions& m, const std::string& p, const std::string& to,
                  const std::array<const char*, 3>& names,  // gate, up, down
                  std::vector<std::pair<std::string, at::Tensor>>& out) {
  const int64_t E = m.moe.num_experts, d = m.d_model, f = m.moe.ffn_hidden;
  const at::Tensor gate = s.take(p + "mlp.experts.gate_proj", {E, d, f});
  const at::Tensor up = s.take(p + "mlp.experts.up_proj", {E, d, f});
  const at::Tensor down = s.take(p + "mlp.experts.down_proj", {E, f, d});
  for (int64_t j = 0; j < E; ++j) {
    const std::string n = to + "experts." + std::to_string(j) + ".";
    out.emplace_back(n + names[0] + ".weight", gate[j].t().contiguous());
    out.emplace_back(n + names[1] + ".weight", up[j].t().contiguous());
    out.emplace_back(n + names[2] + ".weight", down[j].t().contiguous());
  }
}

json common_config(const nn::MoETransformerOptions& m, const char* architecture, const char* model_type) {
  json c;
  c["architectures"] = {architecture};
  c["model_type"] = model_type;
  c["vocab_size"] = m.vocab_size;
  c["hidden_size"] = m.d_model;
  c["num_hidden_layers"] = m.n_layers;
  c["num_attention_heads"] = m.n_heads;
  c["num_key_value_heads"] = m.kv_heads();
  c["head_dim"] = m.head_dim();
  c["hidden_act"] = "silu";
  c["max_position_embeddings"] = m.max_seq_len;
  c["rms_norm_eps"] = m.norm_eps;
  c["rope_theta"] = m.rope_theta;  // transformers 5 reads it into rope_parameters
  c["rope_scaling"] = nullptr;
  c["tie_word_embeddings"] = m.tie_embeddings;
  c["attention_dropout"] = 0.0;
  c["initializer_range"] = m.init_std;
  c["num_experts_per_tok"] = m.moe.top_k;
  c["router_aux_loss_coef"] = m.moe.aux_loss_coeff;
  c["output_router_logits"] = false;
  c["use_cache"] = true;
  return c;
}

}  // namespace

HfFormat hf_format_from_string(const std::string& name) {
  if (name == "mixtral") return HfFormat::kMixtral;
  if (name == "qwen2_moe") return HfFormat::kQwen2Moe;
  TORCH_CHECK_VALUE(false, "hf_export: unknown format '", name, "' (expected 'mixtral' or 'qwen2_moe')");
  return HfFormat::kMixtral;  // unreachable
}

std::string to_string(HfFormat format) { return format == HfFormat::kMixtral ? "mixtral" : "qwen2_moe"; }

namespace {

// config.json of the target for model `m` (all but torch_dtype), after refusing what the
// target cannot express. Needs no tensor, so an export is refused before anything is read.
json target_config(const nn::MoETransformerOptions& m, const HfExportOptions& options, std::vector<std::string>& notes) {
  m.validate();
  check_common(m, options, notes);
  const nn::MoELayerOptions& e = m.moe;
  const bool mixtral = options.format == HfFormat::kMixtral;
  const std::string target = to_string(options.format);
  const auto refuse = [&](bool bad, const std::string& key, const std::string& value, const std::string& why) {
    TORCH_CHECK_VALUE(!bad, "hf_export: ", key, " = ", value, " cannot be exported as ", target, ": ", why);
  };
  json c;
  if (mixtral) {
    for (int64_t i = 0; i < m.n_layers; ++i) {
      refuse(!m.is_moe_layer(i), "model.first_k_dense / model.moe_layer_freq",
             std::to_string(m.first_k_dense) + " / " + std::to_string(m.moe_layer_freq),
             "every Mixtral block is MoE, but block " + std::to_string(i) + " is dense (use format qwen2_moe)");
    }
    refuse(e.num_shared_experts > 0, "moe.num_shared_experts", std::to_string(e.num_shared_experts),
           "Mixtral has no shared experts (use format qwen2_moe)");
    refuse(!e.renormalize, "moe.renormalize", "false",
           "Mixtral always rescales the top-k weights to sum to 1 (use format qwen2_moe: norm_topk_prob)");
    refuse(m.qkv_bias, "model.qkv_bias", "true", "Mixtral's attention has no biases (use format qwen2_moe)");
    c = common_config(m, "MixtralForCausalLM", "mixtral");
    c["intermediate_size"] = e.ffn_hidden;
    c["num_local_experts"] = e.num_experts;
    c["sliding_window"] = nullptr;
    c["router_jitter_noise"] = 0.0;
  } else {
    refuse(e.num_shared_experts == 0, "moe.num_shared_experts", "0",
           "every Qwen2-MoE block has a shared expert (use format mixtral)");
    refuse(!e.shared_expert_gate, "moe.shared_expert_gate", "false",
           "Qwen2-MoE always gates its shared expert with a sigmoid");
    c = common_config(m, "Qwen2MoeForCausalLM", "qwen2_moe");
    c["intermediate_size"] = m.ffn_hidden;  // the dense blocks'
    c["moe_intermediate_size"] = e.ffn_hidden;
    c["shared_expert_intermediate_size"] = e.resolved_shared_ffn_hidden();
    c["num_experts"] = e.num_experts;
    c["norm_topk_prob"] = e.renormalize;
    // Block i is MoE iff i is not listed and (i + 1) % decoder_sparse_step == 0: step 1 and
    // the dense blocks listed express any first_k_dense / moe_layer_freq pattern.
    c["decoder_sparse_step"] = 1;
    std::vector<int64_t> dense;
    for (int64_t i = 0; i < m.n_layers; ++i) {
      if (!m.is_moe_layer(i)) dense.push_back(i);
    }
    c["mlp_only_layers"] = dense;
    c["qkv_bias"] = m.qkv_bias;
    c["use_sliding_window"] = false;
    c["sliding_window"] = nullptr;
    c["max_window_layers"] = m.n_layers;
    if (e.num_shared_experts > 1) {
      notes.push_back("moe.num_shared_experts = " + std::to_string(e.num_shared_experts) +
                           ": our shared experts are one SwiGLU MLP of width " +
                           std::to_string(e.resolved_shared_ffn_hidden()) + ", exported as Qwen2-MoE's one shared expert");
    }
  }

  return c;
}

}  // namespace

std::string hf_export_config(const nn::MoETransformerOptions& model, const HfExportOptions& options,
                             std::vector<std::string>* notes) {
  std::vector<std::string> local;
  return target_config(model, options, notes ? *notes : local).dump(2) + "\n";
}

HfExportPlan plan_hf_export(const nn::MoETransformerOptions& m, std::map<std::string, at::Tensor> state,
                            const HfExportOptions& options) {
  HfExportPlan plan;
  json c = target_config(m, options, plan.notes);
  const nn::MoELayerOptions& e = m.moe;
  const bool mixtral = options.format == HfFormat::kMixtral;
  StateTaker s(std::move(state), options.dtype);
  auto& out = plan.tensors;
  const int64_t d = m.d_model, E = e.num_experts;
  out.emplace_back("model.embed_tokens.weight", s.take("model.embed_tokens.weight", {m.vocab_size, d}));
  for (int64_t i = 0; i < m.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    take_attention(s, m, p, out);
    if (!m.is_moe_layer(i)) {
      take_dense_mlp(s, p + "mlp.", p + "mlp.", d, m.ffn_hidden, out);
    } else if (mixtral) {
      const std::string to = p + "block_sparse_moe.";
      out.emplace_back(to + "gate.weight", s.take(p + "mlp.router.weight", {E, d}));
      take_experts(s, m, p, to, {"w1", "w3", "w2"}, out);
    } else {
      const std::string to = p + "mlp.";
      out.emplace_back(to + "gate.weight", s.take(p + "mlp.router.weight", {E, d}));
      take_experts(s, m, p, to, {"gate_proj", "up_proj", "down_proj"}, out);
      take_dense_mlp(s, p + "mlp.shared_experts.", to + "shared_expert.", d, e.resolved_shared_ffn_hidden(), out);
      out.emplace_back(to + "shared_expert_gate.weight", s.take(p + "mlp.shared_expert_gate.weight", {1, d}));
    }
    out.emplace_back(p + "input_layernorm.weight", s.take(p + "input_layernorm.weight", {d}));
    out.emplace_back(p + "post_attention_layernorm.weight", s.take(p + "post_attention_layernorm.weight", {d}));
  }
  out.emplace_back("model.norm.weight", s.take("model.norm.weight", {d}));
  if (m.tie_embeddings) {
    s.drop("lm_head.weight");  // the embedding itself, when listed (transformers ties on load)
  } else {
    out.emplace_back("lm_head.weight", s.take("lm_head.weight", {m.vocab_size, d}));
  }
  s.check_empty();
  c["torch_dtype"] = s.dtype();
  plan.config_json = c.dump(2) + "\n";
  return plan;
}

HfExportResult export_hf_checkpoint(const std::string& checkpoint_path, const std::string& out_dir,
                                    const HfExportOptions& options) {
  const std::string path = resolve_checkpoint(checkpoint_path);
  const config::Config cfg = config::load_config_string(read_config_yaml(path), path + "/config.yaml");
  const nn::MoETransformerOptions model = nn::transformer_options_from_config(cfg);
  std::vector<std::string> ignored_notes;
  target_config(model, options, ignored_notes);  // refuse before reading the weights

  const fs::path out = fs::path(out_dir).lexically_normal();
  const fs::path final_path = out.has_filename() ? out : out.parent_path();  // "dir/" -> "dir"
  TORCH_CHECK_VALUE(!fs::exists(final_path) || (fs::is_directory(final_path) && fs::is_empty(final_path)),
                    "hf_export: ", final_path.string(), " already exists (the output must be a new or empty directory)");
  const HfExportPlan plan = plan_hf_export(model, read_full_state(path), options);

  // Note [Atomic checkpoint writes]: assemble the directory aside, rename it into place.
  const fs::path tmp = final_path.string() + ".partial-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    write_safetensors((tmp / "model.safetensors").string(), plan.tensors,
                      {{"format", "pt"}, {"switchyard_checkpoint", path}});
    write_file_atomically((tmp / "config.json").string(), plan.config_json);
    if (fs::exists(final_path)) fs::remove(final_path);  // empty, checked above
    durable_rename(tmp.string(), final_path.string());
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  HfExportResult result;
  result.out_dir = final_path.string();
  result.architecture = options.format == HfFormat::kMixtral ? "MixtralForCausalLM" : "Qwen2MoeForCausalLM";
  result.num_tensors = static_cast<int64_t>(plan.tensors.size());
  result.notes = plan.notes;
  return result;
}

}  // namespace switchyard::checkpoint
