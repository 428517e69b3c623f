#include "switchyard/dispatch/config_check.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "switchyard/common/error.h"

namespace switchyard::dispatch {
namespace {

// "section.key" -> value text for the sections the fingerprint covers, plus the placement.
std::map<std::string, std::string> compared_fields(const config::Config& config,
                                                   const ExpertPlacement* placement) {
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
  fields["expert placement"] = placement ? placement->to_string() : "none";
  return fields;
}

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

}  // namespace

void check_same_config(comm::Communicator group, const config::Config& config,
                       const ExpertPlacement* placement) {
  const int size = group.size();
  const uint64_t fp = std::strtoull(config.fingerprint().c_str(), nullptr, 16);
  const uint64_t ph = placement ? placement->hash() : 0;
  const at::Tensor mine = at::tensor({static_cast<int64_t>(fp), static_cast<int64_t>(ph)}, at::kLong);
  const at::Tensor all = group.all_gather(mine).view({size, 2});
  const auto a = all.accessor<int64_t, 2>();
  bool same = true;
  for (int r = 1; r < size; ++r) same = same && a[r][0] == a[0][0] && a[r][1] == a[0][1];
  if (same) return;

  // Slow path, only on a mismatch (every rank takes it: they all see the same hashes):
  // gather every rank's fields to name the differences.
  const std::string text = serialize(compared_fields(config, placement));
  const at::Tensor len = group.all_gather(at::tensor({static_cast<int64_t>(text.size())}, at::kLong));
  const int64_t max_len = len.max().item<int64_t>();
  at::Tensor buf = at::zeros({max_len}, at::kByte);
  std::memcpy(buf.data_ptr<uint8_t>(), text.data(), text.size());
  const at::Tensor bytes = group.all_gather(buf).view({size, max_len});
  std::vector<std::map<std::string, std::string>> per_rank;
  for (int r = 0; r < size; ++r) {
    const auto* p = reinterpret_cast<const char*>(bytes[r].data_ptr<uint8_t>());
    per_rank.push_back(parse(std::string(p, static_cast<size_t>(len[r].item<int64_t>()))));
  }
  std::ostringstream msg;
  msg << "check_same_config: the ranks of " << group.describe()
      << " disagree on the configuration (model/moe/parallel fingerprint or expert placement):";
  for (int r = 1; r < size; ++r) {
    std::vector<std::string> diffs;
    for (const auto& [key, v0] : per_rank[0]) {
      const auto it = per_rank[r].find(key);
      const std::string vr = it == per_rank[r].end() ? "<missing>" : it->second;
      if (vr != v0) diffs.push_back(key + " (rank 0: " + v0 + ", rank " + std::to_string(r) + ": " + vr + ")");
    }
    if (diffs.empty() && (a[r][0] != a[0][0] || a[r][1] != a[0][1])) {
      diffs.emplace_back("fingerprint only (no single field differs in the dump)");
    }
    if (diffs.empty()) continue;
    msg << "\n  rank " << r << " differs from rank 0 in";
    for (size_t i = 0; i < diffs.size(); ++i) msg << (i ? "," : "") << " " << diffs[i];
  }
  SWITCHYARD_FAIL(msg.str());
}

}  // namespace switchyard::dispatch
