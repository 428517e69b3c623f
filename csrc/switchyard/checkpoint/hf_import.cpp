#include "switchyard/checkpoint/hf_import.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <charconv>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "switchyard/checkpoint/file_io.h"
#include "switchyard/checkpoint/safetensors.h"

namespace switchyard::checkpoint {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kLlama = "LlamaForCausalLM";
constexpr const char* kMistral = "MistralForCausalLM";
constexpr const char* kQwen2 = "Qwen2ForCausalLM";

// config.json fields known not to change what the model computes (token ids, generation and
// runtime switches, provenance). Anything else we do not handle is reported as ignored too,
// but these are expected and not worth a second look.
const std::set<std::string> kHarmlessFields = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "bos_token_id",
    "eos_token_id", "pad_token_id", "use_cache", "torch_dtype", "dtype", "pretraining_tp",
    "output_attentions", "output_hidden_states", "return_dict", "tie_encoder_decoder",
    "is_encoder_decoder", "chunk_size_feed_forward", "id2label", "label2id", "problem_type",
    "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id", "task_specific_params",
    "max_window_layers", "use_return_dict", "torchscript", "tf_legacy_loss", "pruned_heads",
    "add_cross_attention", "cross_attention_hidden_size", "finetuning_task", "is_decoder",
};

std::string dims(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

// A YAML scalar that reads back as the same double: shortest round trip, always with a '.'
// or an exponent so it stays a float.
std::string yaml_double(double v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

// config.json with the fields it has read ticked off, so the rest can be reported.
class ConfigFields {
 public:
  ConfigFields(json j, std::string path) : j_(std::move(j)), path_(std::move(path)) {
    TORCH_CHECK_VALUE(j_.is_object(), path_, ": expected a JSON object");
  }

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json& raw(const std::string& key) {
    used_.insert(key);
    return j_.at(key);
  }
  // A value as its JSON text, for messages.
  std::string shown(const std::string& key) const { return j_.contains(key) ? j_.at(key).dump() : "(absent)"; }

  [[noreturn]] void refuse(const std::string& key, const std::string& why) const {
    C10_THROW_ERROR(ValueError, c10::str(path_, ": field '", key, "' = ", shown(key), " is not supported: ", why));
  }
  void mark(const std::string& key) { used_.insert(key); }

  int64_t integer(const std::string& key, std::optional<int64_t> fallback = std::nullopt) {
    used_.insert(key);
    if (!has(key)) {
      TORCH_CHECK_VALUE(fallback.has_value(), path_, ": required field '", key, "' is missing");
      return *fallback;
    }
    const json& v = j_.at(key);
    TORCH_CHECK_VALUE(v.is_number_integer(), path_, ": field '", key, "' = ", v.dump(), " must be an integer");
    return v.get<int64_t>();
  }
  double number(const std::string& key, double fallback) {
    used_.insert(key);
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TORCH_CHECK_VALUE(v.is_number(), path_, ": field '", key, "' = ", v.dump(), " must be a number");
    return v.get<double>();
  }
  bool boolean(const std::string& key, bool fallback) {
    used_.insert(key);
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TORCH_CHECK_VALUE(v.is_boolean(), path_, ": field '", key, "' = ", v.dump(), " must be true or false");
    return v.get<bool>();
  }
  std::string string(const std::string& key, const std::string& fallback) {
    used_.insert(key);
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    TORCH_CHECK_VALUE(v.is_string(), path_, ": field '", key, "' = ", v.dump(), " must be a string");
    return v.get<std::string>();
  }
  // A field that must be absent, null, or equal to `allowed` (e.g. a bias switch at false).
  void require(const std::string& key, const json& allowed, const std::string& why) {
    used_.insert(key);
    if (has(key) && j_.at(key) != allowed) refuse(key, why);
  }

  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& [key, _] : j_.items()) {
      if (!used_.count(key)) out.push_back(key);
    }
    return out;
  }
  const std::string& path() const { return path_; }

 private:
  json j_;
  std::string path_;
  std::set<std::string> used_;
};

// RoPE: rope_theta at the top level (transformers 4) or in rope_parameters (transformers 5);
// any scaling (linear, dynamic, yarn, llama3, ...) is refused.
double read_rope(ConfigFields& c) {
  double theta = c.number("rope_theta", 10000.0);
  if (c.has("rope_scaling")) {
    c.refuse("rope_scaling", "switchyard's rotary embedding has no scaling (it must be null or absent)");
  }
  c.mark("rope_scaling");
  if (c.has("rope_parameters")) {
    const json& p = c.raw("rope_parameters");
    TORCH_CHECK_VALUE(p.is_object(), c.path(), ": field 'rope_parameters' = ", p.dump(), " must be an object");
    for (const auto& [key, value] : p.items()) {
      if (key == "rope_theta") {
        TORCH_CHECK_VALUE(value.is_number(), c.path(), ": field 'rope_parameters.rope_theta' = ", value.dump(),
                          " must be a number");
        theta = value.get<double>();
      } else if (key == "rope_type") {
        TORCH_CHECK_VALUE(value == "default", c.path(), ": field 'rope_parameters.rope_type' = ", value.dump(),
                          " is not supported: switchyard's rotary embedding is the unscaled \"default\" one");
      } else {
        TORCH_CHECK_VALUE(false, c.path(), ": field 'rope_parameters.", key, "' = ", value.dump(),
                          " is not supported: switchyard's rotary embedding takes only rope_theta");
      }
    }
  }
  return theta;
}

}  // namespace

std::vector<std::string> HfModelConfig::overrides() const {
  std::vector<std::string> out = {
      "model.vocab_size=" + std::to_string(vocab_size),
      "model.d_model=" + std::to_string(d_model),
      "model.n_layers=" + std::to_string(n_layers),
      "model.n_heads=" + std::to_string(n_heads),
      "model.n_kv_heads=" + std::to_string(n_kv_heads),
      "model.qkv_bias=" + std::string(qkv_bias ? "true" : "false"),
      "model.ffn_hidden=" + std::to_string(ffn_hidden),
      "model.max_seq_len=" + std::to_string(max_seq_len),
      "model.rope_theta=" + yaml_double(rope_theta),
      "model.norm_eps=" + yaml_double(norm_eps),
      "model.tie_embeddings=" + std::string(tie_embeddings ? "true" : "false"),
      "model.moe_layer_freq=0",
      "model.first_k_dense=0",
  };
  if (init_std) out.push_back("model.init_std=" + yaml_double(*init_std));
  return out;
}

HfModelConfig read_hf_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  TORCH_CHECK_VALUE(fs::is_directory(dir), "hf_import: ", dir, " is not a directory");
  TORCH_CHECK_VALUE(fs::exists(path), "hf_import: ", dir, " has no config.json (not a Hugging Face model directory)");
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    TORCH_CHECK_VALUE(false, path, ": not valid JSON (", e.what(), ")");
  }
  ConfigFields c(std::move(j), path);
  HfModelConfig m;

  // 1. Which model. The class name decides; model_type must agree with it.
  TORCH_CHECK_VALUE(c.has("architectures") && c.raw("architectures").is_array() &&
                        c.raw("architectures").size() == 1 && c.raw("architectures")[0].is_string(),
                    path, ": field 'architectures' = ", c.shown("architectures"),
                    " must name exactly one class (LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM)");
  m.architecture = c.raw("architectures")[0].get<std::string>();
  const std::map<std::string, std::string> model_types = {{kLlama, "llama"}, {kMistral, "mistral"}, {kQwen2, "qwen2"}};
  const auto type = model_types.find(m.architecture);
  if (type == model_types.end()) {
    c.refuse("architectures", "switchyard imports LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM");
  }
  const std::string model_type = c.string("model_type", type->second);
  if (model_type != type->second) {
    c.refuse("model_type", "it must be \"" + type->second + "\" for " + m.architecture);
  }
  const bool qwen2 = m.architecture == kQwen2;

  // 2. Sizes.
  m.vocab_size = c.integer("vocab_size");
  m.d_model = c.integer("hidden_size");
  m.n_layers = c.integer("num_hidden_layers");
  m.n_heads = c.integer("num_attention_heads");
  m.n_kv_heads = c.integer("num_key_value_heads", m.n_heads);
  m.ffn_hidden = c.integer("intermediate_size");
  m.max_seq_len = c.integer("max_position_embeddings");
  for (const char* key : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "num_key_value_heads", "intermediate_size", "max_position_embeddings"}) {
    if (c.has(key) && c.raw(key).get<int64_t>() < 1) c.refuse(key, "it must be >= 1");
  }
  if (m.d_model % m.n_heads != 0) c.refuse("num_attention_heads", "it must divide hidden_size = " + std::to_string(m.d_model));
  if (m.n_heads % m.n_kv_heads != 0) {
    c.refuse("num_key_value_heads", "it must divide num_attention_heads = " + std::to_string(m.n_heads));
  }
  if (c.has("head_dim") && c.integer("head_dim") != m.d_model / m.n_heads) {
    c.refuse("head_dim", "switchyard's head size is hidden_size / num_attention_heads = " +
                             std::to_string(m.d_model / m.n_heads));
  }
  c.mark("head_dim");

  // 3. What the layers compute.
  if (c.string("hidden_act", "silu") != "silu") {
    c.refuse("hidden_act", "switchyard's FFN is SwiGLU (hidden_act must be \"silu\")");
  }
  m.rope_theta = read_rope(c);
  m.norm_eps = c.number("rms_norm_eps", 1e-6);
  m.tie_embeddings = c.boolean("tie_word_embeddings", false);
  // Qwen2 always has q/k/v biases (and no switch for them); Llama's attention_bias would also
  // give o_proj one, which our attention does not have.
  m.qkv_bias = qwen2;
  c.require("attention_bias", false, "switchyard's attention has no o_proj bias (only model.qkv_bias for q/k/v)");
  c.require("mlp_bias", false, "switchyard's FFN has no biases");
  c.require("attention_dropout", 0.0, "switchyard's attention has no dropout");
  if (c.has("quantization_config")) c.refuse("quantization_config", "import an unquantised checkpoint");

  // Sliding-window attention: harmless only if the window covers every position we allow.
  const bool sliding = c.boolean("use_sliding_window", !qwen2);  // Qwen2: off unless switched on
  if (qwen2 && sliding) c.refuse("use_sliding_window", "switchyard's attention is full causal attention");
  if (sliding && c.has("sliding_window")) {
    const int64_t window = c.integer("sliding_window");
    if (window < m.max_seq_len) {
      c.refuse("sliding_window", "switchyard's attention is full causal attention; a window shorter than "
                                 "max_position_embeddings = " + std::to_string(m.max_seq_len) +
                                 " would change it (null or >= max_position_embeddings is accepted)");
    }
  }
  c.mark("sliding_window");
  if (c.has("layer_types")) {
    for (const json& t : c.raw("layer_types")) {
      if (t != "full_attention") c.refuse("layer_types", "every layer must be \"full_attention\"");
    }
  }

  // 4. Initialisation scale (for what upcycling adds) and the stored dtype (informative).
  if (c.has("initializer_range")) m.init_std = c.number("initializer_range", 0.02);
  c.mark("initializer_range");
  m.dtype = c.string("dtype", c.string("torch_dtype", ""));

  for (const std::string& key : c.unused()) {
    if (!kHarmlessFields.count(key)) m.ignored_fields.push_back(key);
  }
  return m;
}

namespace {

// The tensors a checkpoint holds: name -> (reader, entry), across shards.
struct SourceTensors {
  std::vector<std::unique_ptr<SafetensorsReader>> readers;
  std::map<std::string, size_t> where;  // name -> index into readers
};

SourceTensors open_sources(const std::string& dir) {
  SourceTensors src;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  std::map<std::string, std::string> weight_map;  // from the index
  std::vector<std::string> files;
  if (fs::exists(index)) {
    try {
      const json j = json::parse(read_text_file(index.string()));
      weight_map = j.at("weight_map").get<std::map<std::string, std::string>>();
    } catch (const json::exception& e) {
      TORCH_CHECK_VALUE(false, index.string(), ": malformed index (", e.what(), ")");
    }
    std::set<std::string> unique;
    for (const auto& [_, file] : weight_map) {
      TORCH_CHECK_VALUE(file.find('/') == std::string::npos, index.string(), ": shard name '", file,
                        "' must be a file name in ", dir);
      if (unique.insert(file).second) files.push_back(file);
    }
  } else {
    TORCH_CHECK_VALUE(fs::exists(single), "hf_import: ", dir, " has neither model.safetensors nor "
                      "model.safetensors.index.json (only safetensors checkpoints are read, not pytorch_model.bin)");
    files.push_back("model.safetensors");
  }
  for (const std::string& file : files) {
    src.readers.push_back(std::make_unique<SafetensorsReader>((fs::path(dir) / file).string()));
    for (const auto& [name, _] : src.readers.back()->entries()) {
      const auto [it, fresh] = src.where.emplace(name, src.readers.size() - 1);
      TORCH_CHECK_VALUE(fresh, "hf_import: tensor '", name, "' is stored twice, in ", files[it->second], " and ", file);
    }
  }
  for (const auto& [name, file] : weight_map) {
    const auto it = src.where.find(name);
    TORCH_CHECK_VALUE(it != src.where.end() && files[it->second] == file, index.string(), " says tensor '", name,
                      "' is in ", file, ", but ", file, " has no such tensor");
  }
  return src;
}

struct Expected {
  std::string name;
  std::vector<int64_t> shape;
  std::string from;  // which config.json fields imply the shape, for the message
};

std::vector<Expected> expected_tensors(const HfModelConfig& m) {
  const int64_t d = m.d_model, hd = d / m.n_heads, q = m.n_heads * hd, kv = m.n_kv_heads * hd;
  const std::string qs = "num_attention_heads * head_dim, hidden_size";
  const std::string kvs = "num_key_value_heads * head_dim, hidden_size";
  std::vector<Expected> out = {{"model.embed_tokens.weight", {m.vocab_size, d}, "vocab_size, hidden_size"}};
  for (int64_t i = 0; i < m.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "self_attn.q_proj.weight", {q, d}, qs});
    out.push_back({p + "self_attn.k_proj.weight", {kv, d}, kvs});
    out.push_back({p + "self_attn.v_proj.weight", {kv, d}, kvs});
    if (m.qkv_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {q}, "num_attention_heads * head_dim"});
      out.push_back({p + "self_attn.k_proj.bias", {kv}, "num_key_value_heads * head_dim"});
      out.push_back({p + "self_attn.v_proj.bias", {kv}, "num_key_value_heads * head_dim"});
    }
    out.push_back({p + "self_attn.o_proj.weight", {d, q}, "hidden_size, num_attention_heads * head_dim"});
    out.push_back({p + "mlp.gate_proj.weight", {m.ffn_hidden, d}, "intermediate_size, hidden_size"});
    out.push_back({p + "mlp.up_proj.weight", {m.ffn_hidden, d}, "intermediate_size, hidden_size"});
    out.push_back({p + "mlp.down_proj.weight", {d, m.ffn_hidden}, "hidden_size, intermediate_size"});
    out.push_back({p + "input_layernorm.weight", {d}, "hidden_size"});
    out.push_back({p + "post_attention_layernorm.weight", {d}, "hidden_size"});
  }
  out.push_back({"model.norm.weight", {d}, "hidden_size"});
  if (!m.tie_embeddings) out.push_back({"lm_head.weight", {m.vocab_size, d}, "vocab_size, hidden_size"});
  return out;
}

// Source tensors that are skipped on purpose: buffers derived from config.json (older
// transformers saved RoPE's inverse frequencies), and lm_head.weight of a tied model (the
// embedding is the output matrix; transformers ties them on load whatever the file holds).
bool ignorable(const std::string& name, const HfModelConfig& m) {
  static const std::regex inv_freq(R"(model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq)");
  return std::regex_match(name, inv_freq) || (m.tie_embeddings && name == "lm_head.weight");
}

}  // namespace

HfImport import_hf_checkpoint(const std::string& dir, const HfImportOptions& options) {
  HfImport out;
  out.config = read_hf_config(dir);
  out.overrides = out.config.overrides();
  const SourceTensors src = open_sources(dir);
  for (const auto& r : src.readers) out.files.push_back(r->path());

  // Every header checked before any data is read.
  const std::vector<Expected> expected = expected_tensors(out.config);
  std::set<std::string> wanted;
  for (const Expected& e : expected) {
    wanted.insert(e.name);
    const auto it = src.where.find(e.name);
    TORCH_CHECK_VALUE(it != src.where.end(), "hf_import: ", dir, " lacks tensor '", e.name, "' (expected shape ",
                      dims(e.shape), " from config.json: ", e.from, ")");
    const std::vector<int64_t>& actual = src.readers[it->second]->entry(e.name).shape;
    TORCH_CHECK_VALUE(actual == e.shape, "hf_import: tensor '", e.name, "' has shape ", dims(actual),
                      ", expected ", dims(e.shape), " from config.json (", e.from, ")");
  }
  std::vector<std::string> leftover;
  for (const auto& [name, _] : src.where) {
    if (wanted.count(name)) continue;
    if (ignorable(name, out.config)) {
      out.ignored.push_back(name);
    } else {
      leftover.push_back(name);
    }
  }
  if (!leftover.empty()) {
    std::ostringstream os;
    for (size_t i = 0; i < leftover.size() && i < 5; ++i) os << (i ? ", " : "") << "'" << leftover[i] << "'";
    if (leftover.size() > 5) os << ", ... (" << leftover.size() << " in all)";
    TORCH_CHECK_VALUE(false, "hf_import: ", dir, " holds tensor(s) that ", out.config.architecture,
                      " with this config.json does not use: ", os.str());
  }

  for (const Expected& e : expected) {
    at::Tensor t = src.readers[src.where.at(e.name)]->read(e.name);
    if (options.dtype && t.scalar_type() != *options.dtype) t = t.to(*options.dtype);
    out.state.emplace(e.name, std::move(t));
  }
  if (out.config.tie_embeddings) out.state.emplace("lm_head.weight", out.state.at("model.embed_tokens.weight"));
  return out;
}

}  // namespace switchyard::checkpoint
