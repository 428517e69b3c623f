#include "switchyard/checkpoint/checkpoint.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "switchyard/checkpoint/file_io.h"
#include "switchyard/checkpoint/safetensors.h"
#include "switchyard/comm/agreement.h"
#include "switchyard/comm/string_gather.h"
#include "switchyard/common/error.h"

namespace switchyard::checkpoint {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using sharding::StateTensor;

namespace {

constexpr const char* kIndexFile = "index.json";
constexpr const char* kConfigFile = "config.yaml";
constexpr const char* kFormatName = "switchyard-checkpoint";
constexpr const char* kRankPrefix = "rank.";

std::string rank_file_name(int64_t rank) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank_%05lld.safetensors", static_cast<long long>(rank));
  return buf;
}

const char* kind_name(StateTensor::Kind k) {
  switch (k) {
    case StateTensor::Kind::kFlat: return "flat";
    case StateTensor::Kind::kExperts: return "experts";
    case StateTensor::Kind::kWhole: return "whole";
  }
  return "?";
}

// ---- the index, parsed -----------------------------------------------------------------

struct Piece {
  std::string file;
  int64_t start = 0, length = 0;  // flat: elements [start, start + length) of the unit
  std::vector<int64_t> experts;   // experts: the global id of each row, in file order
};

struct TensorRecord {
  std::string kind;
  at::ScalarType dtype = at::kFloat;
  std::vector<int64_t> shape;  // flat: [unit numel]; experts: [E, ...]; whole: its shape
  std::string unit;
  std::vector<Piece> pieces;
};

struct UnitParam {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  bool operator==(const UnitParam& o) const { return name == o.name && shape == o.shape && offset == o.offset; }
};

struct UnitRecord {
  int64_t numel = 0;
  std::vector<UnitParam> params;
};

struct Index {
  std::string dir;
  int64_t step = 0, world_size = 0;
  sharding::EngineCounters counters;
  std::map<std::string, FileDigest> files;
  std::map<std::string, UnitRecord> units;
  std::vector<std::string> unit_order;
  std::map<std::string, TensorRecord> tensors;
  std::map<std::string, std::string> metadata;

  std::string file_path(const std::string& name) const { return (fs::path(dir) / name).string(); }
  const FileDigest& digest(const std::string& name) const {
    auto it = files.find(name);
    SWITCHYARD_CHECK(it != files.end(), "checkpoint ", dir, ": ", kIndexFile, " names no file '", name, "'");
    return it->second;
  }
};

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

TensorRecord parse_record(const json& t) {
  TensorRecord rec;
  rec.kind = t.at("kind").get<std::string>();
  rec.dtype = scalar_type_of(t.at("dtype").get<std::string>());
  rec.shape = t.at("shape").get<std::vector<int64_t>>();
  if (t.contains("unit")) rec.unit = t.at("unit").get<std::string>();
  for (const json& p : t.at("pieces")) {
    Piece piece;
    piece.file = p.at("file").get<std::string>();
    if (p.contains("start")) piece.start = p.at("start").get<int64_t>();
    if (p.contains("length")) piece.length = p.at("length").get<int64_t>();
    if (p.contains("experts")) piece.experts = p.at("experts").get<std::vector<int64_t>>();
    rec.pieces.push_back(std::move(piece));
  }
  return rec;
}

// The pieces of one tensor cover it exactly once: flat shards without gap or overlap, every
// expert's row once, a whole tensor once. Checked by save() before it commits and by verify().
void check_coverage(const std::string& key, const TensorRecord& rec, const std::string& dir) {
  if (rec.kind == "flat") {
    std::vector<std::pair<int64_t, int64_t>> ranges;
    for (const Piece& p : rec.pieces) ranges.emplace_back(p.start, p.length);
    std::sort(ranges.begin(), ranges.end());
    int64_t at = 0;
    for (const auto& [start, length] : ranges) {
      SWITCHYARD_CHECK(start == at, "checkpoint ", dir, ": the shards of '", key, "' leave a gap or overlap at element ",
                       at, " (next piece starts at ", start, ")");
      at += length;
    }
    SWITCHYARD_CHECK(at == rec.shape.at(0), "checkpoint ", dir, ": the shards of '", key, "' cover ", at, " of ",
                     rec.shape.at(0), " elements");
  } else if (rec.kind == "experts") {
    const int64_t E = rec.shape.at(0);
    std::vector<int> seen(static_cast<size_t>(E), 0);
    for (const Piece& p : rec.pieces) {
      for (int64_t id : p.experts) {
        SWITCHYARD_CHECK(id >= 0 && id < E && seen[id]++ == 0, "checkpoint ", dir, ": expert ", id, " of '", key,
                         "' is written twice or is out of range");
      }
    }
    for (size_t e = 0; e < seen.size(); ++e) {
      SWITCHYARD_CHECK(seen[e] == 1, "checkpoint ", dir, ": no rank wrote expert ", e, " of '", key, "'");
    }
  } else {
    SWITCHYARD_CHECK(rec.pieces.size() == 1, "checkpoint ", dir, ": '", key, "' was written ", rec.pieces.size(),
                     " times");
  }
}

Index read_index(const std::string& dir) {
  const std::string path = (fs::path(dir) / kIndexFile).string();
  SWITCHYARD_CHECK(fs::is_directory(dir), "checkpoint ", dir, " does not exist or is not a directory");
  SWITCHYARD_CHECK(fs::exists(path), "checkpoint ", dir, " has no ", kIndexFile,
                   " (an interrupted save never gets one): not a complete checkpoint");
  Index ix;
  ix.dir = dir;
  try {
    const json j = json::parse(read_text_file(path));
    SWITCHYARD_CHECK(j.at("format").get<std::string>() == kFormatName, path, ": not a switchyard checkpoint index");
    const int version = j.at("version").get<int>();
    SWITCHYARD_CHECK(version == kFormatVersion, path, ": checkpoint format version ", version,
                     "; this switchyard reads version ", kFormatVersion);
    ix.step = j.at("step").get<int64_t>();
    ix.world_size = j.at("world_size").get<int64_t>();
    const json& e = j.at("engine");
    ix.counters = {e.at("step").get<int64_t>(), e.at("loss_scale").get<double>(), e.at("clean_steps").get<int64_t>()};
    for (const auto& [name, f] : j.at("files").items()) {
      ix.files[name] = FileDigest{f.at("bytes").get<int64_t>(), f.at("crc32").get<uint32_t>()};
    }
    for (const json& u : j.at("units")) {
      UnitRecord rec;
      rec.numel = u.at("numel").get<int64_t>();
      for (const json& p : u.at("params")) {
        rec.params.push_back({p.at("name").get<std::string>(), p.at("shape").get<std::vector<int64_t>>(),
                              p.at("offset").get<int64_t>()});
      }
      const std::string name = u.at("name").get<std::string>();
      ix.unit_order.push_back(name);
      ix.units[name] = std::move(rec);
    }
    for (const auto& [key, t] : j.at("tensors").items()) ix.tensors[key] = parse_record(t);
    if (j.contains("metadata")) ix.metadata = j.at("metadata").get<std::map<std::string, std::string>>();
  } catch (const nlohmann::json::exception& e) {
    SWITCHYARD_CHECK(false, path, ": malformed checkpoint index (", e.what(), ")");
  }
  return ix;
}

// Every file the index names, checked (size and CRC) once, then opened for reading.
class Readers {
 public:
  explicit Readers(const Index& ix) : ix_(ix) {}
  const SafetensorsReader& get(const std::string& name) {
    auto it = open_.find(name);
    if (it != open_.end()) return *it->second;
    const std::string path = ix_.file_path(name);
    check_digest(path, ix_.digest(name));
    return *open_.emplace(name, std::make_unique<SafetensorsReader>(path)).first->second;
  }

 private:
  const Index& ix_;
  std::map<std::string, std::unique_ptr<SafetensorsReader>> open_;
};

int64_t row_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (size_t i = 1; i < shape.size(); ++i) n *= shape[i];
  return n;
}

// Fills `out` (contiguous CPU, the record's dtype, `count` elements) with elements
// [lo, lo + count) of a flat tensor from the pieces that overlap them.
void read_flat_range(Readers& readers, const std::string& key, const TensorRecord& rec, int64_t lo, int64_t count,
                     const at::Tensor& out, const std::string& dir) {
  int64_t covered = 0;
  for (const Piece& p : rec.pieces) {
    const int64_t a = std::max(lo, p.start), b = std::min(lo + count, p.start + p.length);
    if (a >= b) continue;
    readers.get(p.file).read_elements(key, a - p.start, b - a, out.narrow(0, a - lo, b - a));
    covered += b - a;
  }
  SWITCHYARD_CHECK(covered == count, "checkpoint ", dir, ": the pieces of '", key, "' cover ", covered,
                   " of the elements [", lo, ", ", lo + count, ") asked for");
}

// Row r of an experts tensor: which piece (file) holds global expert `id`, and its row there.
std::map<int64_t, std::pair<const Piece*, int64_t>> expert_rows(const TensorRecord& rec) {
  std::map<int64_t, std::pair<const Piece*, int64_t>> rows;
  for (const Piece& p : rec.pieces) {
    for (size_t r = 0; r < p.experts.size(); ++r) rows.emplace(p.experts[r], std::make_pair(&p, static_cast<int64_t>(r)));
  }
  return rows;
}

// The whole of one tensor record, on the CPU.
at::Tensor read_record(Readers& readers, const std::string& key, const TensorRecord& rec, const std::string& dir) {
  int64_t numel = 1;
  for (int64_t d : rec.shape) numel *= d;
  at::Tensor out = at::empty({numel}, at::TensorOptions().dtype(rec.dtype));
  if (rec.kind == "flat") {
    read_flat_range(readers, key, rec, 0, numel, out, dir);
  } else if (rec.kind == "experts") {
    const int64_t row = row_numel(rec.shape);
    const auto rows = expert_rows(rec);
    for (int64_t e = 0; e < rec.shape.at(0); ++e) {
      auto it = rows.find(e);
      SWITCHYARD_CHECK(it != rows.end(), "checkpoint ", dir, ": no file holds expert ", e, " of '", key, "'");
      readers.get(it->second.first->file).read_elements(key, it->second.second * row, row, out.narrow(0, e * row, row));
    }
  } else {
    SWITCHYARD_CHECK(!rec.pieces.empty(), "checkpoint ", dir, ": no file holds '", key, "'");
    readers.get(rec.pieces.front().file).read_elements(key, 0, numel, out);
  }
  return out.view(rec.shape);
}

// "model.d_model (checkpoint: 256, now: 128)" for every model./moe. key that differs.
std::vector<std::string> differing_model_keys(const std::string& saved_yaml, const config::Config& current,
                                              const std::string& dir) {
  const config::Config saved = config::load_config_string(saved_yaml, (fs::path(dir) / kConfigFile).string());
  const auto a = comm::fingerprinted_fields(saved), b = comm::fingerprinted_fields(current);
  std::vector<std::string> out;
  for (const auto& [key, value] : a) {
    if (key.rfind("parallel.", 0) == 0) continue;  // how the job is laid out, not the model
    auto it = b.find(key);
    const std::string now = it == b.end() ? "<absent>" : it->second;
    if (now != value) out.push_back(key + " (checkpoint: " + value + ", now: " + now + ")");
  }
  return out;
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// Rank 0: the pieces every rank wrote, merged into the index's tensor table, and checked to
// cover every tensor exactly once -- a checkpoint that would lose a byte is not committed.
json merge_pieces(const std::vector<std::string>& per_rank, const std::string& dir) {
  json tensors = json::object();
  for (const std::string& text : per_rank) {
    for (const json& p : json::parse(text)) {
      const std::string key = p.at("key").get<std::string>();
      if (!tensors.contains(key)) {
        json t = {{"kind", p.at("kind")}, {"dtype", p.at("dtype")}, {"shape", p.at("shape")}};
        if (p.contains("unit")) t["unit"] = p.at("unit");
        t["pieces"] = json::array();
        tensors[key] = std::move(t);
      }
      json& t = tensors[key];
      SWITCHYARD_CHECK(t.at("dtype") == p.at("dtype") && t.at("shape") == p.at("shape"), "checkpoint ", dir,
                       ": ranks disagree on the dtype or shape of '", key, "'");
      json piece = {{"file", p.at("file")}};
      for (const char* field : {"start", "length", "experts"}) {
        if (p.contains(field)) piece[field] = p.at(field);
      }
      t["pieces"].push_back(std::move(piece));
    }
  }
  for (const auto& [key, t] : tensors.items()) check_coverage(key, parse_record(t), dir);
  return tensors;
}

void prune(const std::string& root, int64_t keep_last) {
  if (keep_last <= 0) return;
  auto all = list_checkpoints(root);
  while (static_cast<int64_t>(all.size()) > keep_last) {
    fs::remove_all(all.front().second);
    all.erase(all.begin());
  }
}

}  // namespace

std::string step_directory_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& root) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  static const std::regex pattern("step_([0-9]+)");
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || !std::regex_match(name, m, pattern)) continue;
    if (!fs::exists(entry.path() / kIndexFile)) continue;  // an interrupted save
    out.emplace_back(std::stoll(m[1].str()), entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<std::string> latest_checkpoint(const std::string& root) {
  const auto all = list_checkpoints(root);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / kIndexFile)) return path;
  if (auto latest = latest_checkpoint(path)) return *latest;
  SWITCHYARD_CHECK(false, "no checkpoint at ", path, ": it is neither a checkpoint directory (with ", kIndexFile,
                   ") nor a directory holding step_* checkpoints");
  return {};
}

std::string save(const std::string& root, int64_t step, sharding::ShardedEngine& engine, const SaveOptions& options) {
  comm::Communicator world = engine.groups().world;
  const int64_t rank = world.rank();
  const fs::path final_dir = fs::path(root) / step_directory_name(step);
  const fs::path partial = fs::path(final_dir.string() + ".partial");
  if (rank == 0) {
    fs::create_directories(root);
    // Leftovers of saves that died half-way are never read; clear them.
    for (const auto& entry : fs::directory_iterator(root)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_directory() && name.rfind("step_", 0) == 0 &&
          name.size() > 8 && name.compare(name.size() - 8, 8, ".partial") == 0) {
        fs::remove_all(entry.path());
      }
    }
    fs::create_directories(partial);
  }
  world.barrier();

  // 1. This rank's pieces, and what they are.
  const std::string file = rank_file_name(rank);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  json pieces = json::array();
  for (const StateTensor& s : engine.state_tensors()) {
    if (!s.save) continue;
    at::Tensor t = s.tensor.detach();
    json p = {{"key", s.key}, {"kind", kind_name(s.kind)}, {"dtype", safetensors_dtype(t.scalar_type())},
              {"file", file}};
    switch (s.kind) {
      case StateTensor::Kind::kFlat:
        t = t.narrow(0, 0, s.valid);
        p["shape"] = std::vector<int64_t>{s.unit_numel};
        p["unit"] = s.unit;
        p["start"] = s.start;
        p["length"] = s.valid;
        break;
      case StateTensor::Kind::kExperts: {
        std::vector<int64_t> shape = t.sizes().vec();
        shape[0] = s.num_experts;
        p["shape"] = shape;
        p["experts"] = s.experts;
        break;
      }
      case StateTensor::Kind::kWhole:
        p["shape"] = t.sizes().vec();
        break;
    }
    tensors.emplace_back(s.key, t);
    pieces.push_back(std::move(p));
  }
  for (const auto& [name, t] : options.rank_tensors) tensors.emplace_back(kRankPrefix + name, t);
  const FileDigest digest = write_safetensors(
      (partial / file).string(), tensors,
      {{"format", kFormatName}, {"step", std::to_string(step)}, {"rank", std::to_string(rank)}});

  // 2. Rank 0 gathers every rank's description and digest, writes the index last, and moves
  // the directory into place.
  json mine = {{"file", file}, {"rank", rank}, {"bytes", digest.bytes}, {"crc32", digest.crc32}, {"pieces", pieces}};
  const std::vector<std::string> all = comm::all_gather_strings(world, mine.dump());
  if (rank == 0) {
    json files = json::object();
    std::vector<std::string> piece_lists;
    for (const std::string& text : all) {
      const json r = json::parse(text);
      files[r.at("file").get<std::string>()] = {{"bytes", r.at("bytes")}, {"crc32", r.at("crc32")}, {"rank", r.at("rank")}};
      piece_lists.push_back(r.at("pieces").dump());
    }
    const FileDigest config = write_file_atomically((partial / kConfigFile).string(), options.config_yaml);
    files[kConfigFile] = {{"bytes", config.bytes}, {"crc32", config.crc32}};
    json units = json::array();
    for (const sharding::FlatUnit& f : engine.flat_unit_layouts()) {
      json params = json::array();
      for (const sharding::FlatParam& p : f.params()) {
        params.push_back({{"name", p.name}, {"shape", p.sizes}, {"offset", p.offset}});
      }
      units.push_back({{"name", f.name()}, {"numel", f.numel()}, {"params", std::move(params)}});
    }
    const sharding::EngineCounters c = engine.counters();
    json index = {
        {"format", kFormatName},
        {"version", kFormatVersion},
        {"step", step},
        {"world_size", world.size()},
        {"engine", {{"step", c.step}, {"loss_scale", c.loss_scale}, {"clean_steps", c.clean_steps}}},
        {"files", std::move(files)},
        {"units", std::move(units)},
        {"tensors", merge_pieces(piece_lists, partial.string())},
        {"metadata", options.metadata},
    };
    write_file_atomically((partial / kIndexFile).string(), index.dump(1));
    fsync_directory(partial.string());
    if (fs::exists(final_dir)) {
      // Same step saved again (a resumed run): the old copy stays whole until the new one is.
      const fs::path old = fs::path(final_dir.string() + ".replaced");
      fs::remove_all(old);
      durable_rename(final_dir.string(), old.string());
      durable_rename(partial.string(), final_dir.string());
      fs::remove_all(old);
    } else {
      durable_rename(partial.string(), final_dir.string());
    }
    prune(root, options.keep_last);
  }
  world.barrier();  // nobody reads the checkpoint before it has its final name
  return final_dir.string();
}

LoadResult load(const std::string& path, sharding::ShardedEngine& engine, const config::Config* current) {
  const Index ix = read_index(path);
  LoadResult result;
  result.path = path;
  result.step = ix.step;
  result.saved_world_size = ix.world_size;
  result.metadata = ix.metadata;
  check_digest(ix.file_path(kConfigFile), ix.digest(kConfigFile));
  result.config_yaml = read_text_file(ix.file_path(kConfigFile));
  if (current) result.changed_keys = differing_model_keys(result.config_yaml, *current, path);
  auto refuse = [&](const std::string& what) {
    TORCH_CHECK_VALUE(false, "checkpoint ", path, " does not fit this model: ", what,
                      result.changed_keys.empty() ? std::string()
                                                  : "; the model config differs from the checkpoint's in " +
                                                        join(result.changed_keys, ", "));
  };

  // 1. The dense layout, unit by unit, before reading a byte.
  for (const sharding::FlatUnit& f : engine.flat_unit_layouts()) {
    auto it = ix.units.find(f.name());
    if (it == ix.units.end()) refuse("it has no unit '" + f.name() + "'");
    std::vector<UnitParam> mine;
    for (const sharding::FlatParam& p : f.params()) mine.push_back({p.name, p.sizes, p.offset});
    const std::vector<UnitParam>& saved = it->second.params;
    for (size_t i = 0; i < std::max(mine.size(), saved.size()); ++i) {
      if (i < mine.size() && i < saved.size() && mine[i] == saved[i]) continue;
      const std::string a = i < saved.size() ? saved[i].name + " " + shape_str(saved[i].shape) : "nothing";
      const std::string b = i < mine.size() ? mine[i].name + " " + shape_str(mine[i].shape) : "nothing";
      refuse("unit '" + f.name() + "' holds " + a + " in the checkpoint but " + b + " in this model");
    }
  }

  // 2. Every state tensor, read into a staging copy first so a failure leaves the engine
  // untouched.
  Readers readers(ix);
  std::vector<std::pair<at::Tensor, at::Tensor>> staged;  // (live, restored)
  const std::vector<StateTensor> state = engine.state_tensors();
  // The other way round too: a tensor of the checkpoint this model has no place for would be
  // silently lost (e.g. a selection bias the new config switched off).
  std::set<std::string> wanted;
  for (const StateTensor& s : state) wanted.insert(s.key);
  for (const auto& [key, rec] : ix.tensors) {
    if (!wanted.count(key)) refuse("this model has no place for its tensor '" + key + "'");
  }
  for (const StateTensor& s : state) {
    auto it = ix.tensors.find(s.key);
    if (it == ix.tensors.end()) refuse("it has no tensor '" + s.key + "'");
    const TensorRecord& rec = it->second;
    at::Tensor out = at::zeros({s.tensor.numel()}, at::TensorOptions().dtype(rec.dtype));
    switch (s.kind) {
      case StateTensor::Kind::kFlat:
        if (rec.kind != "flat" || rec.shape != std::vector<int64_t>{s.unit_numel}) {
          refuse("'" + s.key + "' has " + std::to_string(rec.shape.empty() ? 0 : rec.shape[0]) +
                 " elements in the checkpoint but " + std::to_string(s.unit_numel) + " here");
        }
        read_flat_range(readers, s.key, rec, s.start, s.valid, out.narrow(0, 0, s.valid), path);
        break;
      case StateTensor::Kind::kExperts: {
        std::vector<int64_t> want = s.tensor.sizes().vec();
        want[0] = s.num_experts;
        if (rec.kind != "experts" || rec.shape != want) {
          refuse("'" + s.key + "' has shape " + shape_str(rec.shape) + " in the checkpoint but " + shape_str(want) +
                 " here (all experts)");
        }
        const int64_t row = row_numel(rec.shape);
        const auto rows = expert_rows(rec);
        for (size_t i = 0; i < s.experts.size(); ++i) {
          auto r = rows.find(s.experts[i]);
          SWITCHYARD_CHECK(r != rows.end(), "checkpoint ", path, ": no file holds expert ", s.experts[i], " of '",
                           s.key, "'");
          readers.get(r->second.first->file)
              .read_elements(s.key, r->second.second * row, row, out.narrow(0, static_cast<int64_t>(i) * row, row));
        }
        break;
      }
      case StateTensor::Kind::kWhole:
        if (rec.shape != s.tensor.sizes().vec()) {
          refuse("'" + s.key + "' has shape " + shape_str(rec.shape) + " in the checkpoint but " +
                 shape_str(s.tensor.sizes().vec()) + " here");
        }
        out = read_record(readers, s.key, rec, path).flatten();
        break;
    }
    staged.emplace_back(s.tensor, out);
  }

  // 3. This rank's own tensors, when the job has the saved shape.
  const int64_t rank = engine.groups().world.rank();
  if (ix.world_size == engine.groups().world.size()) {
    const std::string file = rank_file_name(rank);
    const SafetensorsReader& r = readers.get(file);
    for (const auto& [name, entry] : r.entries()) {
      if (name.rfind(kRankPrefix, 0) == 0) result.rank_tensors[name.substr(std::strlen(kRankPrefix))] = r.read(name);
    }
  }

  const torch::NoGradGuard no_grad;
  for (auto& [live, restored] : staged) live.copy_(restored.view(live.sizes()));
  engine.finish_state_load(ix.counters);
  return result;
}

std::string verify(const std::string& path) {
  const Index ix = read_index(path);
  Readers readers(ix);  // checks each shard's size and CRC once, when it is first opened
  int64_t bytes = 0;
  for (const auto& [name, digest] : ix.files) {
    if (name == kConfigFile) check_digest(ix.file_path(name), digest);
    else readers.get(name);
    bytes += digest.bytes;
  }
  // Every piece exists in its file with its dtype and size, and the pieces cover each tensor
  // exactly once: the headers say so, without reading the data a second time.
  int64_t elements = 0;
  for (const auto& [key, rec] : ix.tensors) {
    check_coverage(key, rec, path);
    int64_t n = 1;
    for (int64_t d : rec.shape) n *= d;
    const int64_t row = row_numel(rec.shape);
    for (const Piece& p : rec.pieces) {
      const SafetensorsEntry& e = readers.get(p.file).entry(key);
      const int64_t want = rec.kind == "flat"      ? p.length
                           : rec.kind == "experts" ? static_cast<int64_t>(p.experts.size()) * row
                                                   : n;
      SWITCHYARD_CHECK(e.dtype == rec.dtype && e.numel == want, "checkpoint ", path, ": '", key, "' in ", p.file,
                       " holds ", e.numel, " elements of ", e.dtype, "; the index says ", want, " of ", rec.dtype);
    }
    elements += n;
  }
  std::ostringstream out;
  out << "checkpoint " << path << ": step " << ix.step << ", written by " << ix.world_size << " rank(s), "
      << ix.files.size() << " files, " << bytes << " bytes, " << ix.tensors.size() << " tensors (" << elements
      << " elements), every file's CRC-32 matches its index";
  return out.str();
}

std::map<std::string, at::Tensor> read_full_state(const std::string& path, bool optimizer) {
  const Index ix = read_index(path);
  Readers readers(ix);
  std::map<std::string, at::Tensor> out;
  std::vector<std::string> fields{"param"};
  if (optimizer) fields.insert(fields.end(), {"exp_avg", "exp_avg_sq"});
  auto name_for = [](const std::string& param, const std::string& field) {
    return field == "param" ? param : param + "." + field;
  };
  for (const std::string& unit : ix.unit_order) {
    const UnitRecord& u = ix.units.at(unit);
    for (const std::string& field : fields) {
      const std::string key = unit + ".flat." + field;
      auto it = ix.tensors.find(key);
      SWITCHYARD_CHECK(it != ix.tensors.end(), "checkpoint ", path, ": no tensor '", key, "'");
      const at::Tensor flat = read_record(readers, key, it->second, path);
      for (const UnitParam& p : u.params) {
        int64_t numel = 1;
        for (int64_t d : p.shape) numel *= d;
        out[name_for(p.name, field)] = flat.narrow(0, p.offset, numel).view(p.shape).clone();
      }
    }
  }
  for (const auto& [key, rec] : ix.tensors) {
    if (rec.kind == "flat") continue;
    if (key.rfind("buffer.", 0) == 0) {
      out[key.substr(7)] = read_record(readers, key, rec, path);
      continue;
    }
    for (const std::string& field : fields) {
      const std::string suffix = "." + field;
      if (key.size() > suffix.size() && key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
        out[name_for(key.substr(0, key.size() - suffix.size()), field)] = read_record(readers, key, rec, path);
      }
    }
  }
  return out;
}

std::string read_config_yaml(const std::string& path) {
  const Index ix = read_index(path);
  check_digest(ix.file_path(kConfigFile), ix.digest(kConfigFile));
  return read_text_file(ix.file_path(kConfigFile));
}

std::map<std::string, std::string> read_metadata(const std::string& path) { return read_index(path).metadata; }

}  // namespace switchyard::checkpoint
