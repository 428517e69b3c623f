// The table of every configuration key: name, type, meaning, range or allowed values.
// Defaults are not repeated here: they are the member initialisers in config.h, read back
// from a default-constructed Config wherever they are shown.
#include "switchyard/config/config_registry.h"

#include <algorithm>
#include <cctype>
#include <type_traits>

namespace switchyard::config {
namespace {

template <typename T>
constexpr FieldType field_type_of() {
  if constexpr (std::is_same_v<T, int64_t>) return FieldType::Int;
  else if constexpr (std::is_same_v<T, double>) return FieldType::Float;
  else if constexpr (std::is_same_v<T, bool>) return FieldType::Bool;
  else if constexpr (std::is_same_v<T, std::string>) return FieldType::String;
  else {
    static_assert(std::is_same_v<T, std::vector<std::string>>, "unsupported field type");
    return FieldType::StringList;
  }
}

// Adds fields of one section struct S (the member of Config at `sec`).
template <typename S>
class SectionBuilder {
 public:
  SectionBuilder(std::vector<SectionInfo>& out, S Config::*sec, std::string name, std::string doc)
      : out_(out), sec_(sec) {
    out_.push_back(SectionInfo{std::move(name), std::move(doc), {}});
  }

  // The returned reference is valid until the next add(); use it only for chaining.
  template <typename T>
  FieldInfo& add(T S::*member, const char* key, const char* doc) {
    SectionInfo& section = out_.back();
    FieldInfo f;
    f.section = section.name;
    f.key = key;
    f.full_key = section.name + "." + key;
    f.type = field_type_of<T>();
    f.doc = doc;
    S Config::*sec = sec_;
    f.ref = [sec, member](Config& c) -> FieldRef { return &(c.*sec.*member); };
    f.cref = [sec, member](const Config& c) -> ConstFieldRef { return &(c.*sec.*member); };
    section.fields.push_back(std::move(f));
    return section.fields.back();
  }

 private:
  std::vector<SectionInfo>& out_;
  S Config::*sec_;
};

// The YAML key is always the C++ member's name.
#define SY_KEY(Struct, member) &Struct::member, #member

std::string check_host(const std::string& item) {
  if (item.empty()) return "empty host name";
  for (char c : item) {
    if (std::isspace(static_cast<unsigned char>(c))) return "contains whitespace";
  }
  auto colon = item.rfind(':');
  if (colon == std::string::npos) return "";
  if (colon == 0) return "empty host name";
  std::string slots = item.substr(colon + 1);
  bool digits = !slots.empty() && std::all_of(slots.begin(), slots.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c));
  });
  if (!digits || slots.size() > 6 || std::stoi(slots) < 1) {
    return "slots after ':' must be a positive integer";
  }
  return "";
}

std::string check_env_name(const std::string& item) {
  bool ok = !item.empty() && !std::isdigit(static_cast<unsigned char>(item[0])) &&
            std::all_of(item.begin(), item.end(), [](char c) {
              return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
            });
  return ok ? "" : "not an environment variable name (letters, digits, '_'; no '=')";
}

std::string check_nonempty(const std::string& item) { return item.empty() ? "must not be empty" : ""; }

std::vector<SectionInfo> build_registry() {
  std::vector<SectionInfo> r;
  {
    SectionBuilder<ModelConfig> b(r, &Config::model, "model",
        "Shape of the transformer: sizes, attention heads, which blocks are MoE, parameter dtype.");
    using M = ModelConfig;
    b.add(SY_KEY(M, vocab_size), "Number of token ids: rows of the embedding and width of the output logits.").at_least(1);
    b.add(SY_KEY(M, d_model), "Hidden size of the residual stream.").at_least(1);
    b.add(SY_KEY(M, n_layers), "Number of transformer blocks.").at_least(1);
    b.add(SY_KEY(M, n_heads), "Attention query heads; must divide d_model, with an even head size for RoPE.").at_least(1);
    b.add(SY_KEY(M, n_kv_heads), "Key/value heads for grouped-query attention; must divide n_heads. 0 = n_heads.").at_least(0);
    b.add(SY_KEY(M, qkv_bias), "Give the attention's q_proj, k_proj and v_proj a bias (o_proj never has one), as Qwen2 does.");
    b.add(SY_KEY(M, ffn_hidden), "Hidden size of the FFN in dense (non-MoE) blocks.").at_least(1);
    b.add(SY_KEY(M, max_seq_len), "Longest sequence the model accepts (RoPE tables are built for it).").at_least(1);
    b.add(SY_KEY(M, rope_theta), "Base of the rotary position embedding frequencies.").greater_than(0);
    b.add(SY_KEY(M, norm_eps), "Epsilon of the RMSNorm layers.").greater_than(0);
    b.add(SY_KEY(M, tie_embeddings), "Share the input embedding matrix with the output projection.");
    b.add(SY_KEY(M, moe_layer_freq), "Block i (0-based) is MoE when i >= first_k_dense and i is a multiple of moe_layer_freq. 0 = no MoE blocks (a dense model).").at_least(0);
    b.add(SY_KEY(M, first_k_dense), "Number of leading blocks that stay dense whatever moe_layer_freq says.").at_least(0);
    b.add(SY_KEY(M, dtype), "Dtype of the parameters.").one_of({"float32", "float64", "bfloat16", "float16"});
    b.add(SY_KEY(M, init_std), "Standard deviation of the normal initialisation of the weights.").greater_than(0);
  }
  {
    SectionBuilder<MoeConfig> b(r, &Config::moe, "moe",
        "The MoE blocks: experts, router, load balancing, capacity, special experts.");
    using E = MoeConfig;
    b.add(SY_KEY(E, num_experts), "Routed experts per MoE block, spread over the expert-parallel ranks.").at_least(1);
    b.add(SY_KEY(E, top_k), "Experts each token is routed to (the average per token for expert_choice).").at_least(1);
    b.add(SY_KEY(E, ffn_hidden), "Hidden size of each expert's FFN.").at_least(1);
    b.add(SY_KEY(E, activation), "Expert FFN: swiglu (gated, three matrices) or gelu (two matrices).").one_of({"swiglu", "gelu"});
    b.add(SY_KEY(E, router), "topk: each token picks its experts; expert_choice: each expert picks its tokens.").one_of({"topk", "expert_choice"});
    b.add(SY_KEY(E, score_func), "Turns router logits into scores: softmax over experts, or an independent sigmoid per expert.").one_of({"softmax", "sigmoid"});
    b.add(SY_KEY(E, renormalize), "Rescale each token's top-k weights to sum to 1.");
    b.add(SY_KEY(E, scaling_factor), "Multiplier applied to the routed experts' combined output.").greater_than(0);
    b.add(SY_KEY(E, num_groups), "Expert groups for group-limited routing (consecutive experts form a group); must divide num_experts. 1 = no groups.").at_least(1);
    b.add(SY_KEY(E, topk_groups), "Groups a token may route into (chosen by group_score). 0 = all groups.").at_least(0);
    b.add(SY_KEY(E, group_score), "Score of a group: its max expert score, the sum of its top-2 scores, or balanced (top_k / num_groups experts from every group).").one_of({"max", "top2_sum", "balanced"});
    b.add(SY_KEY(E, capacity_factor), "Capacity per expert = capacity_factor * tokens * top_k / num_experts; overflow is dropped and counted. 0 = no limit (lossless).").at_least(0);
    b.add(SY_KEY(E, drop_policy), "Which tokens an over-capacity expert keeps: the first by position, or the highest scores.").one_of({"position", "score"});
    b.add(SY_KEY(E, num_shared_experts), "Dense experts every token goes through in addition to its routed experts.").at_least(0);
    b.add(SY_KEY(E, shared_ffn_hidden), "Total hidden size of the shared experts' FFN. 0 = num_shared_experts * ffn_hidden.").at_least(0);
    b.add(SY_KEY(E, shared_expert_gate), "Scale the shared experts' output by a learned per-token sigmoid gate.");
    b.add(SY_KEY(E, num_null_experts), "Null experts: router choices that do no computation, so a token may use fewer than top_k real experts.").at_least(0);
    b.add(SY_KEY(E, num_zero_experts), "Zero-computation experts that output zeros (discard the token's update).").at_least(0);
    b.add(SY_KEY(E, num_copy_experts), "Zero-computation experts that output their input unchanged.").at_least(0);
    b.add(SY_KEY(E, num_constant_experts), "Zero-computation experts that mix the input with a learned constant vector.").at_least(0);
    b.add(SY_KEY(E, gating_residual), "Add the previous MoE block's router logits to this block's logits.");
    b.add(SY_KEY(E, jitter_eps), "Multiplicative noise on the router input during training, uniform in [1 - eps, 1 + eps]. 0 = off.").at_least(0).less_than(1);
    b.add(SY_KEY(E, aux_loss_coeff), "Weight of the Switch-style load-balancing loss. 0 = off.").at_least(0);
    b.add(SY_KEY(E, z_loss_coeff), "Weight of the router z-loss (mean squared log-sum-exp of the logits). 0 = off.").at_least(0);
    b.add(SY_KEY(E, seq_aux_loss_coeff), "Weight of the per-sequence load-balancing loss. 0 = off.").at_least(0);
    b.add(SY_KEY(E, bias_update_rate), "Step size of the aux-loss-free balancing bias added to routing scores. 0 = off.").at_least(0);
    b.add(SY_KEY(E, selection_bias), "Keep a per-expert bias added to the scores when choosing experts, not to the weights (DeepSeek-V3). Implied by bias_update_rate > 0.");
  }
  {
    SectionBuilder<ParallelConfig> b(r, &Config::parallel, "parallel",
        "How the ranks of a job split the work.");
    using P = ParallelConfig;
    b.add(SY_KEY(P, expert_parallel), "Ranks that share one copy of the experts, each holding num_experts / expert_parallel of them.").at_least(1);
    b.add(SY_KEY(P, data_parallel), "Expert-parallel groups (replicas of the experts); world size must be a multiple of expert_parallel * data_parallel. 0 = world size / expert_parallel.").at_least(0);
    b.add(SY_KEY(P, shard_dense), "Shard dense parameters, gradients and optimizer state across ranks (FSDP-style) instead of replicating them.");
    b.add(SY_KEY(P, prefetch), "With shard_dense: overlap communication with compute -- issue the next unit's all-gather before running the current one and keep one gradient reduce-scatter in flight (up to two units' buffers at a time instead of one).");
    b.add(SY_KEY(P, backend), "Communication: mpi (CPU tensors), nccl (CUDA tensors), auto (nccl on CUDA, else mpi).").one_of({"auto", "mpi", "nccl"});
  }
  {
    SectionBuilder<TrainConfig> b(r, &Config::train, "train",
        "The optimisation loop: schedule, AdamW, precision, evaluation and logging.");
    using T = TrainConfig;
    b.add(SY_KEY(T, seed), "Seed of parameter initialisation, data order and router jitter.").at_least(0);
    b.add(SY_KEY(T, steps), "Optimizer steps to run.").at_least(0);
    b.add(SY_KEY(T, micro_batch_size), "Sequences per rank per forward/backward pass.").at_least(1);
    b.add(SY_KEY(T, grad_accum), "Micro-batches accumulated per optimizer step.").at_least(1);
    b.add(SY_KEY(T, lr), "Peak learning rate, reached after warmup.").greater_than(0);
    b.add(SY_KEY(T, min_lr), "Learning rate at the end of the cosine decay; at most lr.").at_least(0);
    b.add(SY_KEY(T, warmup_steps), "Steps of linear warmup from 0 to lr.").at_least(0);
    b.add(SY_KEY(T, weight_decay), "AdamW decoupled weight decay (not applied to norms and biases).").at_least(0);
    b.add(SY_KEY(T, beta1), "AdamW first-moment decay.").at_least(0).less_than(1);
    b.add(SY_KEY(T, beta2), "AdamW second-moment decay.").at_least(0).less_than(1);
    b.add(SY_KEY(T, eps), "AdamW denominator epsilon.").greater_than(0);
    b.add(SY_KEY(T, grad_clip), "Clip the global gradient norm to this value. 0 = no clipping.").at_least(0);
    b.add(SY_KEY(T, precision), "Compute precision: fp32, or autocast to bf16 / fp16 with fp32 master weights, or fp64 (for tests).").one_of({"fp32", "bf16", "fp16", "fp64"});
    b.add(SY_KEY(T, reduce_precision), "Dtype of gradient reductions across ranks: fp32, or compute (the precision's dtype, half the bytes under bf16/fp16). fp64 runs reduce in fp64.").one_of({"fp32", "compute"});
    b.add(SY_KEY(T, loss_scale), "fp16 only: the loss scale. 0 = dynamic (start at 65536, halve and skip the step on overflow, double after 2000 clean steps).").at_least(0);
    b.add(SY_KEY(T, device), "Where each rank computes: cpu, cuda (the local rank's GPU), auto (cuda when visible).").one_of({"auto", "cpu", "cuda"});
    b.add(SY_KEY(T, eval_every), "Evaluate on the validation split every this many steps. 0 = never.").at_least(0);
    b.add(SY_KEY(T, eval_steps), "Validation batches per evaluation.").at_least(1);
    b.add(SY_KEY(T, log_every), "Log loss, throughput and routing statistics every this many steps.").at_least(1);
    b.add(SY_KEY(T, run_dir), "Directory for logs, metrics and the resolved config of the run.").items(check_nonempty, "not empty");
  }
  {
    SectionBuilder<DataConfig> b(r, &Config::data, "data", "Where training tokens come from.");
    using D = DataConfig;
    b.add(SY_KEY(D, source), "bundled: the World English Bible from Debian's sword-text-web (docs/data.md); text: UTF-8 files; jsonl: one {\"text\": ...} per line; tokens: a flat binary file of token ids.").one_of({"bundled", "text", "jsonl", "tokens"});
    b.add(SY_KEY(D, path), "File or directory to read; required unless source is bundled.");
    b.add(SY_KEY(D, tokenizer), "byte (one token per byte, ids 0-255); bpe (a byte-level BPE of model.vocab_size ids, trained once on the training split and cached); or the path of a tokenizer.json.").items(check_nonempty, "not empty");
    b.add(SY_KEY(D, seq_len), "Tokens per training sequence; at most model.max_seq_len.").at_least(1);
    b.add(SY_KEY(D, val_fraction), "Fraction of the data held out for validation.").at_least(0).less_than(1);
    b.add(SY_KEY(D, token_dtype), "Integer type of stored token ids (source tokens, and cached tokenisations).").one_of({"uint16", "uint32"});
  }
  {
    SectionBuilder<CheckpointConfig> b(r, &Config::checkpoint, "checkpoint",
        "Sharded checkpoints: where, how often, and what to resume from.");
    using C = CheckpointConfig;
    b.add(SY_KEY(C, dir), "Directory of the checkpoints (relative paths are relative to train.run_dir).").items(check_nonempty, "not empty");
    b.add(SY_KEY(C, save_every), "Save every this many steps. 0 = only at the end of the run.").at_least(0);
    b.add(SY_KEY(C, keep_last), "Checkpoints kept on disk; older ones are deleted. 0 = keep all.").at_least(0);
    b.add(SY_KEY(C, resume), "\"\" (or false) = start fresh; latest (or true) = newest checkpoint in dir; otherwise a checkpoint path.")
        .alias("false", "").alias("False", "").alias("true", "latest").alias("True", "latest");
    b.add(SY_KEY(C, stop_at_step), "Save a checkpoint and stop after this step, as a time-limited allocation ends a run; train.steps still sets the schedule, and resuming continues to it. 0 = run to train.steps.").at_least(0);
  }
  {
    SectionBuilder<PlacementConfig> b(r, &Config::placement, "placement",
        "Live expert re-placement from measured routing (docs/placement.md); needs parallel.expert_parallel > 1.");
    using P = PlacementConfig;
    b.add(SY_KEY(P, interval), "Solve for a new placement of every MoE layer's experts every this many steps. 0 = never on a schedule.").at_least(0);
    b.add(SY_KEY(P, imbalance_threshold), "Also re-place when some layer's straggler ratio (max over ranks of the tokens per step / the mean) exceeds this. 0 = off; otherwise > 1.").at_least(0);
    b.add(SY_KEY(P, check_every), "Steps between imbalance checks (each check all-reduces the routing statistics).").at_least(1);
    b.add(SY_KEY(P, solver), "ilp: the GLPK MILP warm-started from greedy; greedy: longest-processing-time first.").one_of({"ilp", "greedy"});
    b.add(SY_KEY(P, time_limit), "Seconds each layer's ILP may take; the best placement found by then is used, with its gap logged.").greater_than(0);
    b.add(SY_KEY(P, mip_gap), "Relative gap at which the ILP stops.").at_least(0);
    b.add(SY_KEY(P, slots_per_rank), "Experts a rank may hold (memory). 0 = ceil(num_experts / expert_parallel), so no rank holds more than under the contiguous placement.").at_least(0);
    b.add(SY_KEY(P, traffic_weight), "Cost, in straggler tokens, of one token sent to another rank of the node.").at_least(0);
    b.add(SY_KEY(P, coactivation_weight), "Reward, in straggler tokens, per token whose two experts share a rank.").at_least(0);
    b.add(SY_KEY(P, ranks_per_node), "Consecutive expert-parallel ranks per node (crossing nodes costs node_factor hops). 0 = one node.").at_least(0);
    b.add(SY_KEY(P, node_factor), "Cost of a token crossing nodes relative to one crossing ranks of a node.").at_least(1);
    b.add(SY_KEY(P, min_gain), "Adopt a layer's new placement only when it lowers the objective by at least this fraction (moving experts costs bytes).").at_least(0).less_than(1);
    b.add(SY_KEY(P, ema_decay), "Decay of the moving average of tokens per expert per step.").at_least(0).less_than(1);
    b.add(SY_KEY(P, trace_path), "Write the routing trace (docs/routing_trace.md) here at the end of the run; relative to train.run_dir. \"\" = none.");
    b.add(SY_KEY(P, from_trace), "Before the first step, place the experts by solving from this routing trace (recorded by an earlier run's trace_path; refused if its model shape differs). \"\" = the contiguous placement.");
  }
  {
    SectionBuilder<LaunchConfig> b(r, &Config::launch, "launch",
        "How the launch helper builds the mpirun command line for a job.");
    using L = LaunchConfig;
    b.add(SY_KEY(L, hosts), "Hosts to run on, each host or host:slots. Empty = this machine only.").items(check_host, "each `host` or `host:slots`");
    b.add(SY_KEY(L, hostfile), "An mpirun hostfile, instead of hosts.");
    b.add(SY_KEY(L, procs_per_host), "Ranks started on each host. 0 = as many as the host's slots.").at_least(0);
    b.add(SY_KEY(L, env), "Names of environment variables forwarded to every rank (mpirun -x).").items(check_env_name, "each a variable name");
    b.add(SY_KEY(L, mpirun_args), "Extra arguments passed to mpirun verbatim.").items(check_nonempty, "each not empty");
  }
  {
    SectionBuilder<SpeculationConfig> b(r, &Config::speculation, "speculation",
        "Speculative pre-scheduling in the expert-parallel dispatcher; none of these keys changes results (docs/speculation.md).");
    using S = SpeculationConfig;
    b.add(SY_KEY(S, capacity), "Speculative capacity: size each (rank, peer) receive buffer from that pair's row count in this layer's previous dispatch plus capacity_margin, and send the counts with the rows in one all-to-all (no separate count exchange); rows beyond the capacity follow in a point-to-point second round between the pairs concerned. Bitwise the same results as the exact path.");
    b.add(SY_KEY(S, capacity_margin), "Headroom of the speculative capacity: a pair that moved c rows last time gets c + ceil(capacity_margin * c) rows of room (padding bytes against second rounds).").at_least(0);
    b.add(SY_KEY(S, routes), "Speculative routing, with capacity: before each MoE block's attention, apply the block's router to the block's input (the attention skipped), exchange the row counts that routing would send each peer -- overlapped with the attention -- and size the speculative capacities from them instead of from the previous step; the exact counts still correct a wrong prediction (second round). Top-k routers only (expert choice keeps the previous step's counts); no effect without capacity. Bitwise the same results.");
  }
  return r;
}

#undef SY_KEY

}  // namespace

const char* type_name(FieldType type) {
  switch (type) {
    case FieldType::Int: return "int";
    case FieldType::Float: return "float";
    case FieldType::Bool: return "bool";
    case FieldType::String: return "string";
    case FieldType::StringList: return "list of strings";
    case FieldType::Enum: return "enum";
  }
  return "?";
}

FieldInfo& FieldInfo::one_of(std::vector<std::string> values) {
  type = FieldType::Enum;
  choices = std::move(values);
  return *this;
}

FieldInfo& FieldInfo::alias(std::string from, std::string to) {
  aliases.emplace_back(std::move(from), std::move(to));
  return *this;
}

FieldInfo& FieldInfo::items(ItemCheck check, std::string rule) {
  item_check = check;
  item_rule = std::move(rule);
  return *this;
}

std::string FieldInfo::allowed_text(bool markdown) const {
  const bool integral = type == FieldType::Int;
  if (type == FieldType::Enum) {
    std::string out;
    for (const auto& c : choices) {
      if (!out.empty()) out += ", ";
      out += markdown ? "`" + c + "`" : c;
    }
    return out;
  }
  if (min && max) {
    return (min->exclusive ? "> " : ">= ") + format_number(min->value, integral) + " and " +
           (max->exclusive ? "< " : "<= ") + format_number(max->value, integral);
  }
  if (min) return (min->exclusive ? "> " : ">= ") + format_number(min->value, integral);
  if (max) return (max->exclusive ? "< " : "<= ") + format_number(max->value, integral);
  return item_rule;
}

const FieldInfo* SectionInfo::find(std::string_view key) const {
  for (const auto& f : fields) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

const std::vector<SectionInfo>& registry() {
  static const std::vector<SectionInfo> sections = build_registry();
  return sections;
}

const SectionInfo* find_section(std::string_view name) {
  for (const auto& s : registry()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

const FieldInfo* find_field(std::string_view full_key) {
  auto dot = full_key.find('.');
  if (dot == std::string_view::npos) return nullptr;
  const SectionInfo* s = find_section(full_key.substr(0, dot));
  return s ? s->find(full_key.substr(dot + 1)) : nullptr;
}

std::string closest_match(std::string_view word, const std::vector<std::string>& candidates) {
  // Edit distance counting a swap of two neighbours as one edit (the commonest typo:
  // "tpo_k"). Close enough to be a typo: 1 edit for words up to 3 letters, else up to 2 or a
  // third of the word, whichever is more.
  auto distance = [](std::string_view a, std::string_view b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      for (size_t j = 1; j <= b.size(); ++j) {
        size_t cost = std::tolower(a[i - 1]) == std::tolower(b[j - 1]) ? 0 : 1;
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
        if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
          d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
      }
    }
    return d[a.size()][b.size()];
  };
  const size_t limit = word.size() <= 3 ? 1 : std::max<size_t>(2, word.size() / 3);
  std::string best;
  size_t best_d = limit + 1;
  for (const auto& c : candidates) {
    size_t d = distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

}  // namespace switchyard::config
