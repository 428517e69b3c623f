// The run configuration: one plain struct per YAML section, typed fields with defaults.
//
// Note [One source of truth]
// The structs below hold the values and their defaults. Everything else about a key —
// its YAML name, type, one-line meaning, allowed range or values — lives in the field
// registry (config_registry.h), and that registry alone drives parsing, validation,
// dumping back to YAML, the Python view and the generated docs/configuration.md. Adding a
// key means: a member here, one entry in config_registry.cpp. Nothing else.
//
// Enumerations are validated strings (e.g. moe.router is "topk" or "expert_choice") so
// that the YAML, the dump, the Python dict and the C++ value read the same.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace switchyard::config {

struct ModelConfig {
  int64_t vocab_size = 32000;
  int64_t d_model = 512;
  int64_t n_layers = 8;
  int64_t n_heads = 8;
  int64_t n_kv_heads = 0;  // 0 = n_heads (plain multi-head attention)
  bool qkv_bias = false;   // q/k/v projections with a bias (Qwen2)
  int64_t ffn_hidden = 2048;
  int64_t max_seq_len = 1024;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  int64_t moe_layer_freq = 1;
  int64_t first_k_dense = 0;
  std::string dtype = "float32";
  double init_std = 0.02;

  // Key-value heads after resolving the 0 = n_heads default.
  int64_t kv_heads() const { return n_kv_heads == 0 ? n_heads : n_kv_heads; }
  // Whether block `layer` (0-based) has an MoE FFN: the first first_k_dense blocks are
  // dense, then every block whose index is a multiple of moe_layer_freq is MoE.
  bool is_moe_layer(int64_t layer) const {
    return moe_layer_freq > 0 && layer >= first_k_dense && layer % moe_layer_freq == 0;
  }
};

struct MoeConfig {
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t ffn_hidden = 1024;
  std::string activation = "swiglu";
  std::string router = "topk";
  std::string score_func = "softmax";
  bool renormalize = true;
  double scaling_factor = 1.0;
  int64_t num_groups = 1;
  int64_t topk_groups = 0;  // 0 = all groups (no group limit)
  std::string group_score = "max";
  double capacity_factor = 0.0;  // 0 = no capacity limit: lossless
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
  double bias_update_rate = 0.0;  // 0 = off
  bool selection_bias = false;    // implied by bias_update_rate > 0

  // Zero-computation experts (zero, copy, constant) run locally on every rank.
  int64_t num_zero_computation_experts() const {
    return num_zero_experts + num_copy_experts + num_constant_experts;
  }
  // Every column of the router's logits: what a token's top-k picks among.
  int64_t num_routing_choices() const {
    return num_experts + num_null_experts + num_zero_computation_experts();
  }
};

struct ParallelConfig {
  int64_t expert_parallel = 1;
  int64_t data_parallel = 0;  // 0 = world_size / expert_parallel
  bool shard_dense = false;
  bool prefetch = true;
  std::string backend = "auto";
};

// Speculative pre-scheduling in the expert-parallel dispatcher (docs/speculation.md).
struct SpeculationConfig {
  bool capacity = true;          // size receive buffers from the last dispatch's counts
  double capacity_margin = 0.1;  // capacity = count + ceil(margin * count)
  bool routes = true;            // with capacity: counts predicted by the block's router, early
};

struct TrainConfig {
  int64_t seed = 1234;
  int64_t steps = 1000;
  int64_t micro_batch_size = 8;
  int64_t grad_accum = 1;
  double lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // 0 = no clipping
  std::string precision = "fp32";
  std::string reduce_precision = "fp32";
  double loss_scale = 0.0;  // fp16 only: 0 = dynamic
  std::string device = "auto";
  int64_t eval_every = 100;  // 0 = never
  int64_t eval_steps = 10;
  int64_t log_every = 10;
  std::string run_dir = "runs/default";
};

struct DataConfig {
  std::string source = "bundled";
  std::string path;
  std::string tokenizer = "byte";
  int64_t seq_len = 256;
  double val_fraction = 0.05;
  std::string token_dtype = "uint16";
};

struct CheckpointConfig {
  std::string dir = "checkpoints";
  int64_t save_every = 0;  // 0 = only at the end of the run
  int64_t keep_last = 3;   // 0 = keep all
  std::string resume;      // "" = start fresh, "latest", or a checkpoint path
  int64_t stop_at_step = 0;  // 0 = run to train.steps
};

struct PlacementConfig {
  int64_t interval = 0;              // re-place every this many steps; 0 = never on a schedule
  double imbalance_threshold = 0;    // re-place when max/mean rank load exceeds it; 0 = off
  int64_t check_every = 10;          // steps between imbalance checks
  std::string solver = "ilp";        // ilp | greedy
  double time_limit = 1.0;           // seconds per layer's solve
  double mip_gap = 1e-4;
  int64_t slots_per_rank = 0;        // 0 = ceil(E / expert_parallel): no rank holds more than now
  double traffic_weight = 0;
  double coactivation_weight = 0;
  int64_t ranks_per_node = 0;        // 0 = one node
  double node_factor = 2.0;
  double min_gain = 0.02;            // adopt a layer's new placement only if it is this much better
  double ema_decay = 0.9;            // of the per-step tokens per expert
  std::string trace_path;            // "" = no routing trace file
  std::string from_trace;            // "" = start from the contiguous placement
};

struct LaunchConfig {
  std::vector<std::string> hosts;  // "host" or "host:slots"
  std::string hostfile;
  int64_t procs_per_host = 0;  // 0 = from the host slots / mpirun's default
  std::vector<std::string> env;
  std::vector<std::string> mpirun_args;
};

// Where a key's value came from, for error messages: "configs/x.yaml:12",
// "--set moe.top_k=3", or (absent from the map) the default.
struct Origin {
  std::string file;      // empty for an override
  int line = 0;          // 1-based; 0 when unknown
  std::string cli_override;  // the whole "--set key=value" text, for overrides
  std::string describe() const;
};

struct Config {
  ModelConfig model;
  MoeConfig moe;
  ParallelConfig parallel;
  TrainConfig train;
  DataConfig data;
  CheckpointConfig checkpoint;
  PlacementConfig placement;
  LaunchConfig launch;
  SpeculationConfig speculation;

  // Provenance of every key that was set ("moe.top_k" -> origin). Not part of the value:
  // operator== and fingerprint() ignore it.
  std::map<std::string, Origin, std::less<>> origins;

  // "configs/x.yaml:12", "--set moe.top_k=3" or "default".
  std::string source_of(std::string_view full_key) const;
  // The resolved config as YAML (every key, registry order); loads back to an equal Config.
  std::string to_yaml() const;
  // 16 hex digits: FNV-1a of the dumped model, moe and parallel sections. Ranks compare it
  // to detect a job whose ranks read different configs.
  std::string fingerprint() const;
};

// Equal values in every registered field (provenance ignored).
bool operator==(const Config& a, const Config& b);
inline bool operator!=(const Config& a, const Config& b) { return !(a == b); }

// Reads, parses and validates a YAML file, then applies `overrides` ("section.key=value",
// the value a YAML scalar or flow sequence) and validates the result. Throws
// switchyard::Error naming the file and line (or the override) and the full key.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The same for YAML text already in memory; `source_name` stands for the file in messages.
Config load_config_string(const std::string& yaml_text, const std::string& source_name,
                          const std::vector<std::string>& overrides = {});

// Applies overrides to an existing config and re-validates it.
void apply_overrides(Config& config, const std::vector<std::string>& overrides);

// Range, allowed-value and cross-key checks. load_config calls it; call it yourself after
// building or editing a Config in code.
void validate(const Config& config);

// Checks that need the job's size: world_size must be a multiple of
// parallel.expert_parallel, and of expert_parallel * data_parallel when data_parallel > 0.
void validate_for_world(const Config& config, int world_size);

// parallel.data_parallel after resolving 0 = world_size / expert_parallel.
int64_t resolved_data_parallel(const Config& config, int world_size);

// Same as Config::to_yaml().
std::string dump_yaml(const Config& config);

// The markdown reference of every key (one table per section), as in docs/configuration.md.
std::string reference_markdown();

}  // namespace switchyard::config
