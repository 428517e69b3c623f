// Reading configs: defaults, the demo file, every kind of rejected input (each message must
// name the file, the 1-based line and the full key), and --set overrides.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace switchyard::config {
namespace {

using testing::error_of;
using testing::load;
using testing::load_error;

TEST(ConfigLoad, EmptyTextGivesDefaults) {
  const Config c = load("");
  EXPECT_EQ(c, Config{});
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.model.dtype, "float32");
  EXPECT_TRUE(c.launch.hosts.empty());
  EXPECT_EQ(c.source_of("moe.top_k"), "default");
  EXPECT_NO_THROW(validate(Config{}));
  EXPECT_EQ(load("# only a comment\n"), Config{});
  EXPECT_EQ(load("moe:\n"), Config{});  // an empty section keeps its defaults
}

TEST(ConfigLoad, DemoFileLoads) {
  const std::string path = std::string(SY_SOURCE_DIR) + "/configs/demo.yaml";
  const Config c = load_config(path);
  EXPECT_EQ(c.model.n_layers, 4);
  EXPECT_EQ(c.model.d_model, 256);
  EXPECT_EQ(c.moe.num_experts, 8);
  EXPECT_EQ(c.moe.top_k, 2);
  EXPECT_EQ(c.moe.num_shared_experts, 1);
  EXPECT_EQ(c.parallel.expert_parallel, 2);
  EXPECT_EQ(c.train.device, "cpu");
  EXPECT_EQ(c.model.dtype, "float32");
  EXPECT_EQ(c.launch.hosts, std::vector<std::string>{"localhost:2"});
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  EXPECT_NO_THROW(validate_for_world(c, 2));
  EXPECT_EQ(resolved_data_parallel(c, 2), 1);
  EXPECT_EQ(c.source_of("moe.top_k"), path + ":21");
}

TEST(ConfigLoad, ReadsEveryType) {
  const Config c = load(
      "model:\n"
      "  tie_embeddings: true\n"
      "  norm_eps: 1e-6\n"
      "moe:\n"
      "  capacity_factor: 2\n"       // an integer is a fine float
      "  renormalize: False\n"
      "  num_experts: +16\n"
      "train:\n"
      "  run_dir: 'runs/a b'\n"
      "launch:\n"
      "  hosts:\n"
      "    - node1:4\n"
      "    - node2\n"
      "  env: []\n"
      "  mpirun_args: [--mca, btl, tcp]\n");
  EXPECT_TRUE(c.model.tie_embeddings);
  EXPECT_DOUBLE_EQ(c.model.norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.moe.capacity_factor, 2.0);
  EXPECT_FALSE(c.moe.renormalize);
  EXPECT_EQ(c.moe.num_experts, 16);
  EXPECT_EQ(c.train.run_dir, "runs/a b");
  EXPECT_EQ(c.launch.hosts, (std::vector<std::string>{"node1:4", "node2"}));
  EXPECT_EQ(c.launch.mpirun_args, (std::vector<std::string>{"--mca", "btl", "tcp"}));
  EXPECT_EQ(c.source_of("launch.hosts"), "t.yaml:11");
}

TEST(ConfigLoad, ResumeAcceptsBooleans) {
  EXPECT_EQ(load("checkpoint:\n  resume: false\n").checkpoint.resume, "");
  EXPECT_EQ(load("checkpoint:\n  resume: true\n").checkpoint.resume, "latest");
  EXPECT_EQ(load("checkpoint:\n  resume: ckpt/step_100\n").checkpoint.resume, "ckpt/step_100");
  // Quoted, it is a path that happens to be called "false".
  EXPECT_EQ(load("checkpoint:\n  resume: \"false\"\n").checkpoint.resume, "false");
  EXPECT_EQ(load("data:\n  path:\n").data.path, "");
}

TEST(ConfigLoad, MissingFileNamesThePath) {
  std::string msg = error_of([] { load_config("/nonexistent/dir/run.yaml"); });
  EXPECT_CONTAINS(msg, "'/nonexistent/dir/run.yaml' does not exist");
  msg = error_of([] { load_config(SY_SOURCE_DIR); });
  EXPECT_CONTAINS(msg, "is a directory");
}

TEST(ConfigLoad, ErrorsFromARealFileNameIt) {
  const auto path = std::filesystem::path(::testing::TempDir()) / "sy_config_bad.yaml";
  std::ofstream(path) << "model:\n  d_model: 64\nmoe:\n  top_k: two\n";
  std::string msg = error_of([&] { load_config(path.string()); });
  EXPECT_EQ(msg, path.string() + ":4: moe.top_k: expected an integer, got \"two\"");
  std::filesystem::remove(path);
}

TEST(ConfigLoad, MalformedYaml) {
  std::string msg = load_error("model:\n  d_model: 64\n  n_heads: [1, 2\n");
  EXPECT_CONTAINS(msg, "t.yaml:4: invalid YAML");
  msg = load_error("model:\n  d_model: 64\n   bad: 1\n");
  EXPECT_CONTAINS(msg, "t.yaml:3: invalid YAML");
  msg = load_error("model:\n  d_model: 64\n---\nmoe:\n  top_k: 1\n");
  EXPECT_CONTAINS(msg, "t.yaml:4: expected one YAML document, found 2");
}

TEST(ConfigLoad, TopLevelMustBeAMapping) {
  EXPECT_CONTAINS(load_error("- model\n- moe\n"), "t.yaml:1: expected a mapping of sections");
  EXPECT_CONTAINS(load_error("model: 3\n"), "t.yaml:1: model: expected a mapping of keys, got \"3\"");
}

TEST(ConfigLoad, UnknownSectionSuggestsTheClosest) {
  EXPECT_EQ(load_error("mdoel:\n  d_model: 8\n"), "t.yaml:1: mdoel: unknown section; did you mean 'model'?");
  EXPECT_CONTAINS(load_error("top_k: 2\n"), "t.yaml:1: top_k: unknown section; 'top_k' is a key: did you mean 'moe.top_k'?");
  EXPECT_CONTAINS(load_error("zzz:\n  a: 1\n"), "unknown section (the sections are model, moe, parallel,");
}

TEST(ConfigLoad, UnknownKeySuggestsTheClosest) {
  EXPECT_EQ(load_error("moe:\n  num_experts: 8\n  tpo_k: 2\n"),
            "t.yaml:3: moe.tpo_k: unknown key; did you mean 'top_k'?");
  EXPECT_EQ(load_error("moe:\n  topk: 2\n"), "t.yaml:2: moe.topk: unknown key; did you mean 'top_k'?");
  EXPECT_EQ(load_error("moe:\n  dtype: float32\n"),
            "t.yaml:2: moe.dtype: unknown key in section 'moe'; did you mean 'model.dtype'?");
  EXPECT_CONTAINS(load_error("train:\n  banana: 1\n"), "t.yaml:2: train.banana: unknown key in section 'train'");
}

TEST(ConfigLoad, DuplicatesAreRejected) {
  EXPECT_EQ(load_error("moe:\n  top_k: 2\n  top_k: 1\n"),
            "t.yaml:3: moe.top_k: key appears twice (first at line 2)");
  EXPECT_EQ(load_error("moe:\n  top_k: 2\nmoe:\n  top_k: 1\n"),
            "t.yaml:3: moe: section appears twice (first at line 1)");
}

TEST(ConfigLoad, WrongTypesNameLineAndKey) {
  EXPECT_EQ(load_error("moe:\n  top_k: two\n"), "t.yaml:2: moe.top_k: expected an integer, got \"two\"");
  EXPECT_EQ(load_error("moe:\n  top_k: 2.5\n"),
            "t.yaml:2: moe.top_k: expected an integer, got the floating-point number 2.5");
  EXPECT_EQ(load_error("moe:\n  top_k: 2.0\n"),
            "t.yaml:2: moe.top_k: expected an integer, got the floating-point number 2.0");
  EXPECT_EQ(load_error("moe:\n  top_k: \"2\"\n"), "t.yaml:2: moe.top_k: expected an integer, got the string \"2\"");
  EXPECT_EQ(load_error("moe:\n  top_k: [1, 2]\n"), "t.yaml:2: moe.top_k: expected an integer, got a list");
  EXPECT_EQ(load_error("moe:\n  top_k: {a: 1}\n"), "t.yaml:2: moe.top_k: expected an integer, got a mapping");
  EXPECT_EQ(load_error("moe:\n  top_k:\n"), "t.yaml:2: moe.top_k: expected an integer, got nothing (null)");
  EXPECT_EQ(load_error("train:\n  steps: 99999999999999999999\n"),
            "t.yaml:2: train.steps: integer 99999999999999999999 is out of range (64-bit)");
  EXPECT_EQ(load_error("train:\n  lr: fast\n"), "t.yaml:2: train.lr: expected a number, got \"fast\"");
  EXPECT_EQ(load_error("train:\n  lr: .inf\n"), "t.yaml:2: train.lr: expected a number, got \".inf\"");
  EXPECT_EQ(load_error("train:\n  lr: nan\n"), "t.yaml:2: train.lr: expected a finite number, got nan");
  EXPECT_EQ(load_error("train:\n  lr: 1e999\n"), "t.yaml:2: train.lr: number 1e999 is out of range (double)");
  EXPECT_EQ(load_error("model:\n  tie_embeddings: ture\n"),
            "t.yaml:2: model.tie_embeddings: expected true or false, got \"ture\"");
  EXPECT_EQ(load_error("model:\n  tie_embeddings: yes\n"),
            "t.yaml:2: model.tie_embeddings: expected true or false, got \"yes\"");
  EXPECT_EQ(load_error("model:\n  tie_embeddings: 1\n"),
            "t.yaml:2: model.tie_embeddings: expected true or false, got \"1\"");
  EXPECT_EQ(load_error("train:\n  run_dir: [a]\n"), "t.yaml:2: train.run_dir: expected a string, got a list");
  EXPECT_EQ(load_error("launch:\n  hosts: node1\n"),
            "t.yaml:2: launch.hosts: expected a list of strings such as [a, b], got \"node1\"");
  EXPECT_EQ(load_error("launch:\n  hosts:\n    - a\n    - {b: 1}\n"),
            "t.yaml:4: launch.hosts[1]: expected a string, got a mapping");
}

TEST(ConfigLoad, OverridesApplyAfterTheFile) {
  const Config c = load("moe:\n  top_k: 0\n",  // invalid alone; the override repairs it
                        {"moe.top_k=1", "launch.hosts=[a:2, b:2]", "train.lr=1e-4",
                         "data.path=", "checkpoint.resume=true", " model.dtype = bfloat16"});
  EXPECT_EQ(c.moe.top_k, 1);
  EXPECT_EQ(c.launch.hosts, (std::vector<std::string>{"a:2", "b:2"}));
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_EQ(c.checkpoint.resume, "latest");
  EXPECT_EQ(c.model.dtype, "bfloat16");
  EXPECT_EQ(c.source_of("moe.top_k"), "--set moe.top_k=1");

  Config d;
  apply_overrides(d, {"moe.num_experts=16"});
  EXPECT_EQ(d.moe.num_experts, 16);
}

TEST(ConfigLoad, OverrideErrorsNameTheOverride) {
  EXPECT_EQ(load_error("", {"moe.top_k=two"}), "--set moe.top_k=two: moe.top_k: expected an integer, got \"two\"");
  EXPECT_EQ(load_error("", {"moe.tpo_k=2"}), "--set moe.tpo_k=2: moe.tpo_k: unknown key; did you mean 'top_k'?");
  EXPECT_EQ(load_error("", {"mo.top_k=2"}), "--set mo.top_k=2: mo: unknown section; did you mean 'moe'?");
  EXPECT_EQ(load_error("", {"top_k=2"}), "--set top_k=2: top_k: expected SECTION.KEY=VALUE; did you mean 'moe.top_k'?");
  EXPECT_EQ(load_error("", {"moe.top_k"}), "--set moe.top_k: expected SECTION.KEY=VALUE");
  EXPECT_CONTAINS(load_error("", {"launch.hosts=[a, b"}), "--set launch.hosts=[a, b: launch.hosts: cannot read the value as YAML");
  EXPECT_EQ(load_error("", {"moe.top_k=0"}), "--set moe.top_k=0: moe.top_k: must be >= 1, got 0");
}

}  // namespace
}  // namespace switchyard::config
