#include "switchyard/comm/agreement.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <vector>

#include "switchyard/comm/string_gather.h"
#include "switchyard/common/error.h"

namespace switchyard::comm {
namespace {

std::string serialize(const std::map<std::string, std::string>& fields) {
  std::string out;
  for (const auto& [k, v] : fields) out += k + "\t" + v + "\n";
  return out;
}

std::map<std::string, std::string> parse(const std::string& text) {
  std::map<std::string, std::string> fields;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto tab = line.find('\t');
    if (tab != std::string::npos) fields[line.substr(0, tab)] = line.substr(tab + 1);
  }
  return fields;
}

// FNV-1a: stable across processes and builds (std::hash promises neither).
int64_t fnv1a(const std::string& text) {
  uint64_t h = 14695981039346656037ull;
  for (const unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return static_cast<int64_t>(h);
}

}  // namespace

void check_same_fields(Communicator group, const std::string& what,
                       const std::map<std::string, std::string>& fields) {
  const int size = group.size();
  if (size == 1) return;
  const std::string text = serialize(fields);
  const at::Tensor hashes = group.all_gather(at::tensor({fnv1a(text)}, at::kLong));
  if ((hashes == hashes[0]).all().item<bool>()) return;

  // Slow path, only on a mismatch (every rank takes it: they all see the same hashes):
  // gather every rank's fields to name the differences.
  std::vector<std::map<std::string, std::string>> per_rank;
  for (const std::string& t : all_gather_strings(group, text)) per_rank.push_back(parse(t));
  std::ostringstream msg;
  msg << "the ranks of " << group.describe() << " disagree on " << what << ":";
  for (int r = 1; r < size; ++r) {
    std::vector<std::string> diffs;
    for (const auto& [key, v0] : per_rank[0]) {
      const auto it = per_rank[r].find(key);
      const std::string vr = it == per_rank[r].end() ? "<missing>" : it->second;
      if (vr != v0) diffs.push_back(key + " (rank 0: " + v0 + ", rank " + std::to_string(r) + ": " + vr + ")");
    }
    for (const auto& [key, vr] : per_rank[r]) {
      if (!per_rank[0].count(key)) diffs.push_back(key + " (rank 0: <missing>, rank " + std::to_string(r) + ": " + vr + ")");
    }
    if (diffs.empty()) continue;
    msg << "\n  rank " << r << " differs from rank 0 in";
    for (size_t i = 0; i < diffs.size(); ++i) msg << (i ? "," : "") << " " << diffs[i];
  }
  SWITCHYARD_FAIL(msg.str());
}

std::map<std::string, std::string> fingerprinted_fields(const config::Config& config) {
  std::map<std::string, std::string> fields;
  std::istringstream in(config.to_yaml());
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] != ' ') {
      section = line.substr(0, line.find(':'));
      continue;
    }
    if (section != "model" && section != "moe" && section != "parallel") continue;
    const auto colon = line.find(": ");
    if (colon == std::string::npos) continue;
    const auto start = line.find_first_not_of(' ');
    fields[section + "." + line.substr(start, colon - start)] = line.substr(colon + 2);
  }
  return fields;
}

void check_same_config(Communicator group, const config::Config& config,
                       const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> fields = fingerprinted_fields(config);
  fields.insert(extra.begin(), extra.end());
  check_same_fields(group, "the configuration (model/moe/parallel sections)", fields);
}

}  // namespace switchyard::comm
