// Checks on a fully read Config: each field's range or allowed values (from the registry),
// then the cross-key rules below, which relate several keys. They run after the file and
// every override are applied, so an override can repair a value the file got wrong, and
// each error names where the offending value finally came from.
#include <algorithm>

#include "switchyard/common/error.h"
#include "switchyard/config/config.h"
#include "switchyard/config/config_registry.h"

namespace switchyard::config {
namespace {

using std::to_string;

// The message format of Note [Config error messages] in config_parse.cpp. A key that was
// never set (a default, or a value assigned in code) has no location to show.
[[noreturn]] void fail_key(const Config& c, const std::string& key, const std::string& what) {
  auto it = c.origins.find(key);
  std::string where = it == c.origins.end() ? "" : it->second.describe() + ": ";
  throw Error(where + key + ": " + what);
}

void check_bounds(const Config& c, const FieldInfo& f, double v, const std::string& shown) {
  bool ok = true;
  if (f.min) ok = ok && (f.min->exclusive ? v > f.min->value : v >= f.min->value);
  if (f.max) ok = ok && (f.max->exclusive ? v < f.max->value : v <= f.max->value);
  if (!ok) fail_key(c, f.full_key, "must be " + f.allowed_text(false) + ", got " + shown);
}

void check_item(const Config& c, const FieldInfo& f, const std::string& item, const std::string& label) {
  if (!f.item_check) return;
  if (std::string why = f.item_check(item); !why.empty()) fail_key(c, f.full_key, label + quote(item) + ": " + why);
}

void check_field(const Config& c, const FieldInfo& f) {
  const ConstFieldRef ref = f.cref(c);
  if (auto* p = std::get_if<const int64_t*>(&ref)) {
    check_bounds(c, f, static_cast<double>(**p), to_string(**p));
  } else if (auto* p = std::get_if<const double*>(&ref)) {
    check_bounds(c, f, **p, format_value(ref));
  } else if (auto* p = std::get_if<const std::string*>(&ref)) {
    const std::string& s = **p;
    if (f.type == FieldType::Enum &&
        std::find(f.choices.begin(), f.choices.end(), s) == f.choices.end()) {
      std::string near = closest_match(s, f.choices);
      fail_key(c, f.full_key, "unknown value " + quote(s) + "; allowed: " + f.allowed_text(false) +
                                  (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
    check_item(c, f, s, "");
  } else if (auto* p = std::get_if<const std::vector<std::string>*>(&ref)) {
    for (size_t i = 0; i < (*p)->size(); ++i) {
      check_item(c, f, (**p)[i], "item " + to_string(i) + " ");
    }
  }
}

// "moe.num_experts = 8 (configs/x.yaml:9)"
std::string describe_key(const Config& c, const std::string& key) {
  const FieldInfo* f = find_field(key);
  return key + " = " + (f ? format_value(*f, c) : "?") + " (" + c.source_of(key) + ")";
}

[[noreturn]] void fail_rule(const Config& c, const CrossKeyRule& rule, const std::string& what) {
  // Report at the first key the user actually set: that is the line to look at.
  std::string primary = rule.keys.front();
  for (const auto& k : rule.keys) {
    if (c.origins.count(k)) {
      primary = k;
      break;
    }
  }
  std::string involved;
  for (const auto& k : rule.keys) involved += (involved.empty() ? "" : ", ") + describe_key(c, k);
  fail_key(c, primary, what + " [" + involved + "]");
}

std::vector<CrossKeyRule> build_rules() {
  std::vector<CrossKeyRule> r;
  auto add = [&r](std::vector<std::string> keys, std::string doc,
                  std::function<std::string(const Config&, int)> check) {
    r.push_back(CrossKeyRule{std::move(keys), std::move(doc), std::move(check)});
  };

  // --- model ---------------------------------------------------------------------------
  add({"model.d_model", "model.n_heads"}, "`model.n_heads` divides `model.d_model`.",
      [](const Config& c, int) -> std::string {
        const auto& m = c.model;
        if (m.d_model % m.n_heads == 0) return "";
        return "d_model " + to_string(m.d_model) + " is not divisible by n_heads " + to_string(m.n_heads);
      });
  add({"model.d_model", "model.n_heads"},
      "The head size `model.d_model / model.n_heads` is even (rotary embeddings rotate pairs).",
      [](const Config& c, int) -> std::string {
        const auto& m = c.model;
        if (m.d_model % m.n_heads != 0 || (m.d_model / m.n_heads) % 2 == 0) return "";
        return "head size d_model / n_heads = " + to_string(m.d_model / m.n_heads) + " is odd";
      });
  add({"model.n_kv_heads", "model.n_heads"},
      "`model.n_kv_heads` (when not 0) divides `model.n_heads`.",
      [](const Config& c, int) -> std::string {
        const auto& m = c.model;
        if (m.n_kv_heads == 0 || m.n_heads % m.n_kv_heads == 0) return "";
        return "n_heads " + to_string(m.n_heads) + " is not divisible by n_kv_heads " + to_string(m.n_kv_heads);
      });
  add({"model.first_k_dense", "model.n_layers"}, "`model.first_k_dense` <= `model.n_layers`.",
      [](const Config& c, int) -> std::string {
        if (c.model.first_k_dense <= c.model.n_layers) return "";
        return "first_k_dense " + to_string(c.model.first_k_dense) + " exceeds n_layers " +
               to_string(c.model.n_layers);
      });

  // --- moe -----------------------------------------------------------------------------
  add({"moe.top_k", "moe.num_experts", "moe.num_null_experts", "moe.num_zero_experts",
       "moe.num_copy_experts", "moe.num_constant_experts"},
      "`moe.top_k` <= the router's choices: num_experts + num_null_experts + num_zero_experts "
      "+ num_copy_experts + num_constant_experts.",
      [](const Config& c, int) -> std::string {
        if (c.moe.top_k <= c.moe.num_routing_choices()) return "";
        return "top_k " + to_string(c.moe.top_k) + " exceeds the " +
               to_string(c.moe.num_routing_choices()) + " experts a token can be routed to";
      });
  add({"moe.num_groups", "moe.num_experts"}, "`moe.num_groups` divides `moe.num_experts`.",
      [](const Config& c, int) -> std::string {
        if (c.moe.num_experts % c.moe.num_groups == 0) return "";
        return "num_experts " + to_string(c.moe.num_experts) + " is not divisible by num_groups " +
               to_string(c.moe.num_groups);
      });
  add({"moe.topk_groups", "moe.num_groups"}, "`moe.topk_groups` <= `moe.num_groups`.",
      [](const Config& c, int) -> std::string {
        if (c.moe.topk_groups <= c.moe.num_groups) return "";
        return "topk_groups " + to_string(c.moe.topk_groups) + " exceeds num_groups " +
               to_string(c.moe.num_groups);
      });
  add({"moe.top_k", "moe.topk_groups", "moe.num_groups", "moe.num_experts"},
      "With group-limited routing (`num_groups` > 1, `topk_groups` > 0), `moe.top_k` <= "
      "topk_groups * num_experts / num_groups, the experts in the chosen groups.",
      [](const Config& c, int) -> std::string {
        const auto& e = c.moe;
        if (e.num_groups <= 1 || e.topk_groups == 0 || e.num_experts % e.num_groups != 0) return "";
        int64_t reachable = e.topk_groups * (e.num_experts / e.num_groups);
        if (e.top_k <= reachable) return "";
        return "top_k " + to_string(e.top_k) + " exceeds the " + to_string(reachable) +
               " experts in topk_groups groups";
      });
  add({"moe.group_score", "moe.top_k", "moe.num_groups"},
      "`moe.group_score: balanced` needs `moe.top_k` divisible by `moe.num_groups`.",
      [](const Config& c, int) -> std::string {
        const auto& e = c.moe;
        if (e.group_score != "balanced" || e.top_k % e.num_groups == 0) return "";
        return "group_score balanced takes top_k / num_groups experts from every group, but top_k " +
               to_string(e.top_k) + " is not divisible by num_groups " + to_string(e.num_groups);
      });

  add({"moe.router", "moe.capacity_factor"},
      "`moe.router: expert_choice` needs `moe.capacity_factor` > 0 (each expert takes "
      "capacity_factor * tokens * top_k / num_experts tokens).",
      [](const Config& c, int) -> std::string {
        if (c.moe.router != "expert_choice" || c.moe.capacity_factor > 0) return "";
        return "expert_choice routing needs a capacity, but capacity_factor is 0";
      });
  add({"moe.router", "moe.num_null_experts", "moe.num_zero_experts", "moe.num_copy_experts",
       "moe.num_constant_experts", "moe.num_groups", "moe.selection_bias", "moe.bias_update_rate"},
      "`moe.router: expert_choice` has no null or zero-computation experts, no expert groups "
      "and no selection bias (experts choose tokens; tokens choose nothing).",
      [](const Config& c, int) -> std::string {
        const auto& e = c.moe;
        if (e.router != "expert_choice") return "";
        if (e.num_null_experts + e.num_zero_computation_experts() > 0)
          return "expert_choice routing cannot route to null or zero-computation experts";
        if (e.num_groups > 1) return "expert_choice routing has no expert groups";
        if (e.selection_bias || e.bias_update_rate > 0)
          return "expert_choice routing has no selection bias";
        return "";
      });
  add({"moe.shared_expert_gate", "moe.num_shared_experts"},
      "`moe.shared_expert_gate` needs `moe.num_shared_experts` > 0.",
      [](const Config& c, int) -> std::string {
        if (!c.moe.shared_expert_gate || c.moe.num_shared_experts > 0) return "";
        return "shared_expert_gate is set but there are no shared experts";
      });

  // --- parallel ------------------------------------------------------------------------
  add({"moe.num_experts", "parallel.expert_parallel"},
      "`parallel.expert_parallel` divides `moe.num_experts` (every rank holds as many experts).",
      [](const Config& c, int) -> std::string {
        if (c.moe.num_experts % c.parallel.expert_parallel == 0) return "";
        return "num_experts " + to_string(c.moe.num_experts) + " is not divisible by expert_parallel " +
               to_string(c.parallel.expert_parallel);
      });
  add({"parallel.backend", "train.device"}, "`parallel.backend: nccl` needs `train.device` cuda or auto.",
      [](const Config& c, int) -> std::string {
        if (c.parallel.backend != "nccl" || c.train.device != "cpu") return "";
        return "backend nccl moves CUDA tensors, but device is cpu";
      });
  add({"parallel.expert_parallel"},
      "The world size (ranks launched) is a multiple of `parallel.expert_parallel` (checked at start-up).",
      [](const Config& c, int world) -> std::string {
        if (world <= 0 || world % c.parallel.expert_parallel == 0) return "";
        return "world size " + to_string(world) + " is not a multiple of expert_parallel " +
               to_string(c.parallel.expert_parallel);
      });
  add({"parallel.data_parallel", "parallel.expert_parallel"},
      "When `parallel.data_parallel` > 0, the world size is a multiple of data_parallel * "
      "expert_parallel (checked at start-up).",
      [](const Config& c, int world) -> std::string {
        const auto& p = c.parallel;
        if (world <= 0 || p.data_parallel == 0 || world % (p.data_parallel * p.expert_parallel) == 0) return "";
        return "world size " + to_string(world) + " is not a multiple of data_parallel * expert_parallel = " +
               to_string(p.data_parallel * p.expert_parallel);
      });

  // --- train, data, launch -------------------------------------------------------------
  add({"train.min_lr", "train.lr"}, "`train.min_lr` <= `train.lr`.",
      [](const Config& c, int) -> std::string {
        if (c.train.min_lr <= c.train.lr) return "";
        return "min_lr " + format_number(c.train.min_lr, false) + " exceeds lr " + format_number(c.train.lr, false);
      });
  add({"data.seq_len", "model.max_seq_len"}, "`data.seq_len` <= `model.max_seq_len`.",
      [](const Config& c, int) -> std::string {
        if (c.data.seq_len <= c.model.max_seq_len) return "";
        return "seq_len " + to_string(c.data.seq_len) + " exceeds max_seq_len " + to_string(c.model.max_seq_len);
      });
  add({"data.path", "data.source"}, "`data.path` is set unless `data.source` is bundled.",
      [](const Config& c, int) -> std::string {
        if (c.data.source == "bundled" || !c.data.path.empty()) return "";
        return "source " + c.data.source + " needs a path";
      });
  add({"data.token_dtype", "model.vocab_size"},
      "`data.token_dtype: uint16` needs `model.vocab_size` <= 65536.",
      [](const Config& c, int) -> std::string {
        if (c.data.token_dtype != "uint16" || c.model.vocab_size <= 65536) return "";
        return "uint16 cannot hold token ids up to vocab_size " + to_string(c.model.vocab_size) + "; use uint32";
      });
  add({"model.vocab_size", "data.tokenizer"}, "`data.tokenizer: byte` needs `model.vocab_size` >= 256.",
      [](const Config& c, int) -> std::string {
        if (c.data.tokenizer != "byte" || c.model.vocab_size >= 256) return "";
        return "vocab_size " + to_string(c.model.vocab_size) + " is below the 256 ids of the byte tokenizer";
      });
  add({"model.vocab_size", "data.tokenizer"},
      "`data.tokenizer: bpe` needs `model.vocab_size` >= 257 (the 256 bytes and the document separator).",
      [](const Config& c, int) -> std::string {
        if (c.data.tokenizer != "bpe" || c.model.vocab_size >= 257) return "";
        return "vocab_size " + to_string(c.model.vocab_size) +
               " leaves no room for merges: a bpe tokenizer needs the 256 byte ids and the separator";
      });
  add({"placement.imbalance_threshold"}, "`placement.imbalance_threshold` is 0 (off) or above 1 (max/mean >= 1 always).",
      [](const Config& c, int) -> std::string {
        const double t = c.placement.imbalance_threshold;
        if (t == 0 || t > 1) return "";
        return "threshold " + format_number(t, false) + " would re-place on every check: max/mean load is never below 1";
      });
  add({"placement.interval", "placement.imbalance_threshold", "placement.from_trace", "parallel.expert_parallel"},
      "Placing experts (`placement.interval`, `placement.imbalance_threshold` or `placement.from_trace` set) needs `parallel.expert_parallel` > 1.",
      [](const Config& c, int) -> std::string {
        const bool live = c.placement.interval > 0 || c.placement.imbalance_threshold > 0 || !c.placement.from_trace.empty();
        if (!live || c.parallel.expert_parallel > 1) return "";
        return "there is nothing to re-place with expert_parallel = 1: every rank holds every expert";
      });
  add({"launch.hostfile", "launch.hosts"}, "At most one of `launch.hosts` and `launch.hostfile` is set.",
      [](const Config& c, int) -> std::string {
        if (c.launch.hosts.empty() || c.launch.hostfile.empty()) return "";
        return "set either hosts or hostfile, not both";
      });
  return r;
}

void run_checks(const Config& config, int world_size) {
  for (const auto& section : registry()) {
    for (const auto& field : section.fields) check_field(config, field);
  }
  for (const auto& rule : cross_key_rules()) {
    if (std::string what = rule.check(config, world_size); !what.empty()) fail_rule(config, rule, what);
  }
}

}  // namespace

const std::vector<CrossKeyRule>& cross_key_rules() {
  static const std::vector<CrossKeyRule> rules = build_rules();
  return rules;
}

void validate(const Config& config) { run_checks(config, 0); }

void validate_for_world(const Config& config, int world_size) {
  if (world_size < 1) throw Error("world size must be >= 1, got " + to_string(world_size));
  run_checks(config, world_size);
}

int64_t resolved_data_parallel(const Config& config, int world_size) {
  validate_for_world(config, world_size);
  const auto& p = config.parallel;
  return p.data_parallel > 0 ? p.data_parallel : world_size / p.expert_parallel;
}

}  // namespace switchyard::config
