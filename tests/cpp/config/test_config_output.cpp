// Writing configs out: the YAML dump loads back to an equal Config, the fingerprint tracks
// exactly the model/moe/parallel sections, and the markdown reference covers every key.
#include <gtest/gtest.h>

#include "switchyard/config/config_registry.h"
#include "test_util.h"

namespace switchyard::config {
namespace {

using testing::load;

TEST(ConfigDump, RoundTripsTheDemo) {
  const Config c = load_config(std::string(SY_SOURCE_DIR) + "/configs/demo.yaml");
  const std::string text = dump_yaml(c);
  const Config back = load_config_string(text, "dump.yaml");
  EXPECT_EQ(back, c) << text;
  EXPECT_EQ(back.to_yaml(), text);
}

TEST(ConfigDump, RoundTripsAwkwardValues) {
  Config c;
  c.train.lr = 0.1 + 0.2;  // not a short decimal: needs all 17 digits
  c.train.eps = 1e-300;
  c.moe.jitter_eps = 1.0 / 3.0;
  c.moe.capacity_factor = 1.25;
  c.train.seed = 0;
  c.train.run_dir = "runs/it's \"quoted\" \\ back\tslash: # not a comment";
  c.data.path = "123";              // a string that looks like a number
  c.checkpoint.resume = "false";    // a string that looks like a bool
  c.data.tokenizer = "caf\xc3\xa9/tokenizer.json";
  c.launch.hosts = {"a:2", "b"};
  c.launch.mpirun_args = {"--mca", "btl", "^openib", "-x", "A=[1, 2]"};
  c.launch.env = {};
  validate(c);
  const std::string text = dump_yaml(c);
  const Config back = load_config_string(text, "dump.yaml");
  EXPECT_EQ(back, c) << text;
  EXPECT_EQ(back.train.run_dir, c.train.run_dir);
  EXPECT_EQ(back.checkpoint.resume, "false");
}

TEST(ConfigDump, ListsEveryKeyInRegistryOrder) {
  const std::string text = dump_yaml(Config{});
  EXPECT_EQ(text.rfind("model:\n  vocab_size: 32000\n", 0), 0u) << text;
  size_t pos = 0;
  for (const auto& s : registry()) {
    pos = text.find(s.name + ":\n", pos);
    ASSERT_NE(pos, std::string::npos) << s.name;
    for (const auto& f : s.fields) EXPECT_CONTAINS(text, "  " + f.key + ": ");
  }
  EXPECT_CONTAINS(text, "  lr: 0.0003\n");
  EXPECT_CONTAINS(text, "  eps: 1.0e-08\n");
  EXPECT_CONTAINS(text, "  rope_theta: 10000.0\n");
  EXPECT_CONTAINS(text, "  hosts: []\n");
  EXPECT_CONTAINS(text, "  resume: \"\"\n");
}

TEST(ConfigEquality, ComparesValuesNotOrigins) {
  Config a = load("moe:\n  top_k: 1\n");
  Config b;
  b.moe.top_k = 1;
  EXPECT_EQ(a, b);  // b has no origins
  b.launch.env = {"X"};
  EXPECT_NE(a, b);
}

TEST(ConfigFingerprint, TracksModelMoeAndParallelOnly) {
  const Config base;
  const std::string fp = base.fingerprint();
  EXPECT_EQ(fp.size(), 16u);
  EXPECT_EQ(fp.find_first_not_of("0123456789abcdef"), std::string::npos) << fp;
  EXPECT_EQ(load("").fingerprint(), fp);

  Config c = base;
  c.train.lr = 1.0;
  c.data.seq_len = 32;
  c.train.run_dir = "elsewhere";
  EXPECT_EQ(c.fingerprint(), fp);  // run settings may differ between runs of one model
  c.moe.top_k = 1;
  EXPECT_NE(c.fingerprint(), fp);
  c = base;
  c.parallel.expert_parallel = 2;
  EXPECT_NE(c.fingerprint(), fp);
  c = base;
  c.model.norm_eps = 1.0000000001e-5;
  EXPECT_NE(c.fingerprint(), fp);
}

TEST(ConfigReference, DocumentsEveryKeyAndRule) {
  const std::string md = reference_markdown();
  for (const auto& s : registry()) {
    EXPECT_CONTAINS(md, "### `" + s.name + "`");
    for (const auto& f : s.fields) EXPECT_CONTAINS(md, "| `" + f.full_key + "` | ");
  }
  for (const auto& rule : cross_key_rules()) EXPECT_CONTAINS(md, "- " + rule.doc + "\n");
  EXPECT_CONTAINS(md, "| `moe.top_k` | int | `2` | >= 1 | ");
  EXPECT_CONTAINS(md, "| `moe.router` | enum | `\"topk\"` | `topk`, `expert_choice` | ");
  EXPECT_CONTAINS(md, "| `train.beta2` | float | `0.95` | >= 0 and < 1 | ");
}

TEST(ConfigModelHelpers, DerivedValues) {
  ModelConfig m;
  m.n_heads = 8;
  EXPECT_EQ(m.kv_heads(), 8);
  m.n_kv_heads = 2;
  EXPECT_EQ(m.kv_heads(), 2);
  m.first_k_dense = 1;
  m.moe_layer_freq = 2;
  std::vector<bool> moe;
  for (int i = 0; i < 6; ++i) moe.push_back(m.is_moe_layer(i));
  EXPECT_EQ(moe, (std::vector<bool>{false, false, true, false, true, false}));
  m.moe_layer_freq = 0;
  EXPECT_FALSE(m.is_moe_layer(4));
  MoeConfig e;
  e.num_experts = 8;
  e.num_null_experts = 2;
  e.num_zero_experts = 1;
  e.num_copy_experts = 1;
  e.num_constant_experts = 1;
  EXPECT_EQ(e.num_zero_computation_experts(), 3);
  EXPECT_EQ(e.num_routing_choices(), 13);
}

}  // namespace
}  // namespace switchyard::config
