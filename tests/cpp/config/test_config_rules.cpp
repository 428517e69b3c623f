// Validation after reading: ranges, allowed values, and the rules that relate several keys
// (each error names the keys involved and where they were set), including the world size.
#include <gtest/gtest.h>

#include <set>

#include "switchyard/config/config_registry.h"
#include "test_util.h"

namespace switchyard::config {
namespace {

using testing::error_of;
using testing::load;
using testing::load_error;

TEST(ConfigRanges, OutOfRangeValues) {
  EXPECT_EQ(load_error("moe:\n  top_k: 0\n"), "t.yaml:2: moe.top_k: must be >= 1, got 0");
  EXPECT_EQ(load_error("moe:\n  top_k: -3\n"), "t.yaml:2: moe.top_k: must be >= 1, got -3");
  EXPECT_EQ(load_error("moe:\n  capacity_factor: -0.5\n"),
            "t.yaml:2: moe.capacity_factor: must be >= 0, got -0.5");
  EXPECT_EQ(load_error("train:\n  lr: 0\n"), "t.yaml:2: train.lr: must be > 0, got 0.0");
  EXPECT_EQ(load_error("train:\n  beta2: 1.0\n"), "t.yaml:2: train.beta2: must be >= 0 and < 1, got 1.0");
  EXPECT_EQ(load_error("data:\n  val_fraction: 1\n"), "t.yaml:2: data.val_fraction: must be >= 0 and < 1, got 1.0");
  EXPECT_EQ(load_error("parallel:\n  expert_parallel: 0\n"),
            "t.yaml:2: parallel.expert_parallel: must be >= 1, got 0");
}

TEST(ConfigRanges, UnknownEnumValueListsTheAllowedOnes) {
  EXPECT_EQ(load_error("moe:\n  score_func: softmx\n"),
            "t.yaml:2: moe.score_func: unknown value \"softmx\"; allowed: softmax, sigmoid; did you mean 'softmax'?");
  EXPECT_EQ(load_error("model:\n  dtype: int8\n"),
            "t.yaml:2: model.dtype: unknown value \"int8\"; allowed: float32, float64, bfloat16, float16");
  EXPECT_EQ(load_error("", {"parallel.backend=gloo"}),
            "--set parallel.backend=gloo: parallel.backend: unknown value \"gloo\"; allowed: auto, mpi, nccl");
}

TEST(ConfigRanges, ListAndStringItems) {
  EXPECT_EQ(load_error("launch:\n  hosts: [a:2, \"b:x\"]\n"),
            "t.yaml:2: launch.hosts: item 1 \"b:x\": slots after ':' must be a positive integer");
  EXPECT_EQ(load_error("launch:\n  hosts: [\"a:0\"]\n"),
            "t.yaml:2: launch.hosts: item 0 \"a:0\": slots after ':' must be a positive integer");
  EXPECT_EQ(load_error("launch:\n  env: [OMP_NUM_THREADS, A=B]\n"),
            "t.yaml:2: launch.env: item 1 \"A=B\": not an environment variable name (letters, digits, '_'; no '=')");
  EXPECT_EQ(load_error("train:\n  run_dir: \"\"\n"), "t.yaml:2: train.run_dir: \"\": must not be empty");
}

// The combination errors report at the first key that was set, and list every key of the
// rule with its value and origin.
TEST(ConfigRules, TopKAgainstTheExperts) {
  std::string msg = load_error("moe:\n  num_experts: 4\n  top_k: 6\n");
  EXPECT_CONTAINS(msg, "t.yaml:3: moe.top_k: top_k 6 exceeds the 4 experts a token can be routed to");
  EXPECT_CONTAINS(msg, "moe.num_experts = 4 (t.yaml:2)");
  EXPECT_CONTAINS(msg, "moe.num_null_experts = 0 (default)");
  // Null and zero-computation experts are router choices too.
  EXPECT_NO_THROW(load("moe:\n  num_experts: 4\n  top_k: 6\n  num_null_experts: 1\n  num_copy_experts: 1\n"));
  // Reported at the first key that was set when top_k kept its default.
  msg = load_error("moe:\n  num_experts: 1\n");
  EXPECT_CONTAINS(msg, "t.yaml:2: moe.num_experts: top_k 2 exceeds the 1 experts");
  EXPECT_CONTAINS(msg, "moe.top_k = 2 (default)");
}

TEST(ConfigRules, ExpertsAcrossRanks) {
  std::string msg = load_error("moe:\n  num_experts: 6\nparallel:\n  expert_parallel: 4\n");
  EXPECT_CONTAINS(msg, "t.yaml:2: moe.num_experts: num_experts 6 is not divisible by expert_parallel 4");
  EXPECT_CONTAINS(msg, "parallel.expert_parallel = 4 (t.yaml:4)");
  msg = load_error("", {"parallel.expert_parallel=3"});
  EXPECT_CONTAINS(msg, "--set parallel.expert_parallel=3: parallel.expert_parallel: num_experts 8 is not divisible");
}

TEST(ConfigRules, ExpertGroups) {
  EXPECT_CONTAINS(load_error("moe:\n  num_experts: 8\n  num_groups: 3\n"),
                  "t.yaml:3: moe.num_groups: num_experts 8 is not divisible by num_groups 3");
  EXPECT_CONTAINS(load_error("moe:\n  num_groups: 2\n  topk_groups: 3\n"),
                  "t.yaml:3: moe.topk_groups: topk_groups 3 exceeds num_groups 2");
  EXPECT_CONTAINS(load_error("moe:\n  num_experts: 8\n  top_k: 3\n  num_groups: 4\n  topk_groups: 1\n"),
                  "t.yaml:3: moe.top_k: top_k 3 exceeds the 2 experts in topk_groups groups");
  std::string msg = load_error("moe:\n  top_k: 3\n  num_groups: 2\n  group_score: balanced\n");
  EXPECT_CONTAINS(msg, "t.yaml:4: moe.group_score: group_score balanced takes top_k / num_groups");
  EXPECT_CONTAINS(msg, "moe.top_k = 3 (t.yaml:2)");
  EXPECT_NO_THROW(load("moe:\n  top_k: 4\n  num_groups: 2\n  group_score: balanced\n"));
  EXPECT_NO_THROW(load("moe:\n  num_experts: 16\n  top_k: 4\n  num_groups: 4\n  topk_groups: 2\n"));
}

TEST(ConfigRules, AttentionShapes) {
  EXPECT_CONTAINS(load_error("model:\n  n_heads: 8\n  n_kv_heads: 3\n"),
                  "t.yaml:3: model.n_kv_heads: n_heads 8 is not divisible by n_kv_heads 3");
  std::string msg = load_error("model:\n  d_model: 100\n  n_heads: 8\n");
  EXPECT_CONTAINS(msg, "t.yaml:2: model.d_model: d_model 100 is not divisible by n_heads 8");
  EXPECT_CONTAINS(msg, "model.n_heads = 8 (t.yaml:3)");
  EXPECT_CONTAINS(load_error("model:\n  d_model: 24\n  n_heads: 8\n"),
                  "t.yaml:2: model.d_model: head size d_model / n_heads = 3 is odd");
  EXPECT_CONTAINS(load_error("model:\n  n_layers: 2\n  first_k_dense: 3\n"),
                  "t.yaml:3: model.first_k_dense: first_k_dense 3 exceeds n_layers 2");
  EXPECT_NO_THROW(load("model:\n  n_heads: 8\n  n_kv_heads: 2\n"));
}

TEST(ConfigRules, TrainDataLaunch) {
  EXPECT_CONTAINS(load_error("train:\n  lr: 1e-4\n  min_lr: 1e-3\n"),
                  "t.yaml:3: train.min_lr: min_lr 0.001 exceeds lr 0.0001");
  EXPECT_CONTAINS(load_error("data:\n  seq_len: 4096\n"),
                  "t.yaml:2: data.seq_len: seq_len 4096 exceeds max_seq_len 1024");
  EXPECT_CONTAINS(load_error("data:\n  source: jsonl\n"), "t.yaml:2: data.source: source jsonl needs a path");
  EXPECT_CONTAINS(load_error("model:\n  vocab_size: 100000\n"),
                  "t.yaml:2: model.vocab_size: uint16 cannot hold token ids up to vocab_size 100000; use uint32");
  EXPECT_NO_THROW(load("model:\n  vocab_size: 100000\ndata:\n  token_dtype: uint32\n"));
  EXPECT_CONTAINS(load_error("model:\n  vocab_size: 100\n"),
                  "t.yaml:2: model.vocab_size: vocab_size 100 is below the 256 ids of the byte tokenizer");
  EXPECT_CONTAINS(load_error("launch:\n  hosts: [a]\n  hostfile: h.txt\n"),
                  "t.yaml:3: launch.hostfile: set either hosts or hostfile, not both");
  EXPECT_CONTAINS(load_error("parallel:\n  backend: nccl\ntrain:\n  device: cpu\n"),
                  "t.yaml:2: parallel.backend: backend nccl moves CUDA tensors, but device is cpu");
}

TEST(ConfigRules, WorldSize) {
  const Config c = load("parallel:\n  expert_parallel: 2\n");
  EXPECT_NO_THROW(validate_for_world(c, 2));
  EXPECT_NO_THROW(validate_for_world(c, 4));
  EXPECT_EQ(resolved_data_parallel(c, 4), 2);
  std::string msg = error_of([&] { validate_for_world(c, 3); });
  EXPECT_CONTAINS(msg, "t.yaml:2: parallel.expert_parallel: world size 3 is not a multiple of expert_parallel 2");
  EXPECT_CONTAINS(error_of([&] { validate_for_world(c, 0); }), "world size must be >= 1, got 0");

  const Config d = load("parallel:\n  expert_parallel: 2\n  data_parallel: 2\n");
  EXPECT_NO_THROW(validate_for_world(d, 8));  // a multiple of 2 * 2
  EXPECT_EQ(resolved_data_parallel(d, 8), 2);
  msg = error_of([&] { validate_for_world(d, 6); });
  EXPECT_CONTAINS(msg, "t.yaml:3: parallel.data_parallel: world size 6 is not a multiple of data_parallel * expert_parallel = 4");
  EXPECT_CONTAINS(msg, "parallel.expert_parallel = 2 (t.yaml:2)");
}

TEST(ConfigRules, CodeBuiltConfigsAreValidatedToo) {
  Config c;
  c.moe.top_k = 0;
  EXPECT_EQ(error_of([&] { validate(c); }), "moe.top_k: must be >= 1, got 0");
}

// The registry is the single description of the keys: keep it well formed.
TEST(ConfigRegistry, IsConsistent) {
  std::set<std::string> seen;
  for (const auto& s : registry()) {
    EXPECT_FALSE(s.doc.empty()) << s.name;
    for (const auto& f : s.fields) {
      EXPECT_TRUE(seen.insert(f.full_key).second) << "duplicate " << f.full_key;
      EXPECT_FALSE(f.doc.empty()) << f.full_key;
      EXPECT_EQ(f.type == FieldType::Enum, !f.choices.empty()) << f.full_key;
      EXPECT_EQ(find_field(f.full_key), &f);
    }
  }
  EXPECT_EQ(find_field("moe.nope"), nullptr);
  EXPECT_EQ(find_field("nope"), nullptr);
  for (const auto& rule : cross_key_rules()) {
    EXPECT_FALSE(rule.doc.empty());
    for (const auto& k : rule.keys) EXPECT_NE(find_field(k), nullptr) << "rule names unknown key " << k;
  }
}

TEST(ConfigRegistry, ClosestMatch) {
  const std::vector<std::string> keys = {"top_k", "topk_groups", "num_experts"};
  EXPECT_EQ(closest_match("tpo_k", keys), "top_k");
  EXPECT_EQ(closest_match("TOP_K", keys), "top_k");
  EXPECT_EQ(closest_match("num_expert", keys), "num_experts");
  EXPECT_EQ(closest_match("banana", keys), "");
}

}  // namespace
}  // namespace switchyard::config
