// Checkpoints of a ShardedEngine's training state (docs/checkpoints.md is the user's page).
//
// A checkpoint is one directory, <root>/step_<8 digits>/, holding
//   rank_<5 digits>.safetensors  each rank's pieces of the state, in rank-independent terms:
//                                flat-buffer shards (master weights and AdamW moments) as
//                                element ranges of their unit, local experts as rows tagged
//                                with their global expert ids, replicated buffers once, and
//                                the rank's own tensors (RNG states) as "rank.<name>"
//   config.yaml                  the resolved config of the run that wrote it
//   index.json                   written last: the format version, step, world size, engine
//                                counters, every file's size and CRC-32, every unit's
//                                parameter layout, where each piece of each tensor lives, and
//                                the caller's metadata (data position, trainer state)
//
// Because pieces are described by what they are (elements [a, b) of unit u; experts 4..7)
// rather than by who held them, a checkpoint written on R ranks loads on any R' ranks, with
// any expert-parallel size, sharded or replicated, and into one process for evaluation or
// export (read_full_state). Writing is atomic (Note [Atomic checkpoint writes], file_io.h);
// reading checks every file's size and CRC before using it and refuses a checkpoint whose
// layout does not fit the model, naming the differing config keys.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/config/config.h"
#include "switchyard/sharding/sharded_engine.h"

namespace switchyard::checkpoint {

inline constexpr int kFormatVersion = 1;

struct SaveOptions {
  int64_t keep_last = 0;        // complete checkpoints left in root after this save; 0 = all
  std::string config_yaml;      // the resolved config, stored as config.yaml
  std::map<std::string, std::string> metadata;     // rank 0's, free-form text (e.g. JSON)
  std::map<std::string, at::Tensor> rank_tensors;  // this rank's own, e.g. its RNG state
};

// Writes <root>/step_<step>/ (replacing a checkpoint of the same step only once the new one
// is complete), then deletes the oldest complete checkpoints beyond keep_last. Returns the
// directory. Collective over engine.groups().world.
std::string save(const std::string& root, int64_t step, sharding::ShardedEngine& engine,
                 const SaveOptions& options);

struct LoadResult {
  std::string path;
  int64_t step = 0;
  int64_t saved_world_size = 0;
  std::string config_yaml;
  std::map<std::string, std::string> metadata;
  // The rank's own tensors, when the checkpoint was written by as many ranks as load it.
  std::map<std::string, at::Tensor> rank_tensors;
  // model./moe. keys whose values differ from `current` but leave every shape as it was
  // ("moe.top_k (checkpoint: 2, now: 1)").
  std::vector<std::string> changed_keys;
};

// Restores the engine's state from the checkpoint directory `path`, written on any number of
// ranks. With `current`, a layout that does not fit is reported with the model./moe. keys
// that differ from the checkpoint's config. Throws c10::ValueError (a file that fails its
// check, a missing or misshapen tensor) before writing anything into the engine when the
// checkpoint cannot be read. Not collective: every rank reads what it needs.
LoadResult load(const std::string& path, sharding::ShardedEngine& engine, const config::Config* current = nullptr);

// "step_00000100".
std::string step_directory_name(int64_t step);
// The complete checkpoints (a final name and an index) under root, by ascending step.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& root);
std::optional<std::string> latest_checkpoint(const std::string& root);
// A checkpoint directory as given, or the latest one under a root directory; throws naming
// the path when there is none.
std::string resolve_checkpoint(const std::string& path_or_root);

// Checks every file's size and CRC, that every tensor's pieces exist and cover it exactly
// once, and returns a short human-readable summary. Throws naming the first problem.
std::string verify(const std::string& path);

// The whole model state of a checkpoint in one process: every parameter by its model name
// (dense ones reassembled from their shards, experts from their rows), every buffer, and
// with `optimizer` also "<name>.exp_avg" / "<name>.exp_avg_sq". Checks files as load() does.
std::map<std::string, at::Tensor> read_full_state(const std::string& path, bool optimizer = false);

// The checkpoint's config.yaml (checked against the index) and its metadata.
std::string read_config_yaml(const std::string& path);
std::map<std::string, std::string> read_metadata(const std::string& path);

}  // namespace switchyard::checkpoint
