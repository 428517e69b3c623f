// Routing trace files (routing_trace.h): safetensors tensors + one JSON metadata entry.
#include "switchyard/placement/routing_trace.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <utility>

#include "switchyard/checkpoint/safetensors.h"

namespace switchyard::placement {
namespace {

using json = nlohmann::ordered_json;

constexpr const char* kFormatKey = "format";
constexpr const char* kFormatName = "switchyard.routing_trace";

std::string tensor_name(int64_t l, const char* what) { return "layer" + std::to_string(l) + "." + what; }

// CRC-32 of a contiguous CPU tensor's bytes: a flipped bit in a count is found on load.
int64_t crc_of(const at::Tensor& t) {
  const auto* data = static_cast<const Bytef*>(t.data_ptr());
  return static_cast<int64_t>(::crc32(0L, data, static_cast<uInt>(t.numel() * t.element_size())));
}

std::string utc_now(int64_t unix_time) {
  const std::time_t t = static_cast<std::time_t>(unix_time);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "";
  return buf;
}

// Typed access to the metadata JSON; every failure names the file and the field.
class Fields {
 public:
  Fields(const json& j, std::string path) : j_(j), path_(std::move(path)) {}

  const json& at(const char* field) const {
    TORCH_CHECK_VALUE(j_.is_object() && j_.contains(field), "routing trace ", path_, ": the metadata "
                      "has no field '", field, "'");
    return j_.at(field);
  }
  int64_t integer(const char* field, int64_t min) const {
    const json& v = at(field);
    TORCH_CHECK_VALUE(v.is_number_integer() && v.get<int64_t>() >= min, "routing trace ", path_,
                      ": field '", field, "' must be an integer >= ", min, ", got ", v.dump());
    return v.get<int64_t>();
  }
  std::vector<int64_t> integers(const char* field, int64_t min, size_t size) const {
    const json& v = at(field);
    bool ok = v.is_array() && (size == 0 || v.size() == size);
    if (ok) {
      for (const json& x : v) ok = ok && x.is_number_integer() && x.get<int64_t>() >= min;
    }
    TORCH_CHECK_VALUE(ok, "routing trace ", path_, ": field '", field, "' must be a list of ",
                      size == 0 ? std::string("") : std::to_string(size) + " ", "integers >= ", min,
                      ", got ", v.dump());
    return v.get<std::vector<int64_t>>();
  }
  double number(const char* field, double min, double max) const {
    const json& v = at(field);
    TORCH_CHECK_VALUE(v.is_number() && v.get<double>() >= min && v.get<double>() < max, "routing trace ",
                      path_, ": field '", field, "' must be a number in [", min, ", ", max, "), got ",
                      v.dump());
    return v.get<double>();
  }

 private:
  const json& j_;
  std::string path_;
};

}  // namespace

void save_trace(const std::string& path, const RoutingStatistics& statistics, const TraceCreation& created) {
  const int64_t L = statistics.num_layers();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  json crcs = json::object();
  json total_tokens = json::array(), skipped = json::array(), top_k = json::array(), names = json::array(),
       routers = json::array();
  int64_t d_model = 0;
  for (int64_t l = 0; l < L; ++l) {
    const LayerStatistics& st = statistics.layer(l);
    auto host = [](const at::Tensor& t) { return t.to(at::kCPU, at::kDouble).contiguous(); };
    tensors.emplace_back(tensor_name(l, "tokens"), host(st.tokens));
    tensors.emplace_back(tensor_name(l, "tokens_ema"), host(st.tokens_ema));
    tensors.emplace_back(tensor_name(l, "traffic"), host(st.traffic));
    tensors.emplace_back(tensor_name(l, "coactivation"), host(st.coactivation));
    if (st.transitions.defined()) tensors.emplace_back(tensor_name(l, "transitions"), host(st.transitions));
    total_tokens.push_back(statistics.total_tokens(l));
    skipped.push_back(st.transitions_skipped);
    const LayerInfo& info = statistics.layer_info()[l];
    top_k.push_back(info.top_k);
    names.push_back(info.name);
    routers.push_back(info.router);
    if (info.d_model > 0) d_model = info.d_model;
  }
  for (const auto& [name, t] : tensors) crcs[name] = crc_of(t);
  TraceCreation c = created;
  if (c.unix_time == 0) {
    c.unix_time = std::chrono::duration_cast<std::chrono::seconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  }
  if (c.utc.empty()) c.utc = utc_now(c.unix_time);
  if (c.host.empty()) c.host = host_name();
  const json meta = {
      {"format_version", kRoutingTraceFormatVersion},
      {"num_layers", L},
      {"experts_per_layer", statistics.experts_per_layer()},
      {"num_ranks", statistics.num_source_ranks()},
      {"ema_decay", statistics.ema_decay()},
      {"steps", statistics.steps()},
      {"top_k", top_k},
      {"total_tokens", total_tokens},
      {"transitions_skipped", skipped},
      {"crc32", crcs},
      {"model", {{"d_model", d_model}, {"moe_layer_names", names}, {"routers", routers}}},
      {"created",
       {{"unix_time", c.unix_time}, {"utc", c.utc}, {"host", c.host}, {"world_size", c.world_size},
        {"note", c.note}}},
  };
  checkpoint::write_safetensors(path, tensors, {{kFormatKey, kFormatName}, {kFormatName, meta.dump()}});
}

RoutingTrace load_trace(const std::string& path) {
  const checkpoint::SafetensorsReader reader(path);
  const auto& md = reader.metadata();
  const auto fmt = md.find(kFormatKey);
  TORCH_CHECK_VALUE(fmt != md.end() && fmt->second == kFormatName, "routing trace ", path,
                    ": not a switchyard routing trace (metadata 'format' is ",
                    fmt == md.end() ? std::string("missing") : "'" + fmt->second + "'", ", expected '",
                    kFormatName, "')");
  const auto text = md.find(kFormatName);
  TORCH_CHECK_VALUE(text != md.end(), "routing trace ", path, ": the metadata has no '", kFormatName, "' entry");
  json j;
  try {
    j = json::parse(text->second);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK_VALUE(false, "routing trace ", path, ": the '", kFormatName, "' metadata is not valid JSON: ",
                      e.what());
  }
  const Fields f(j, path);
  const int64_t version = f.integer("format_version", 1);
  TORCH_CHECK_VALUE(version == kRoutingTraceFormatVersion, "routing trace ", path, ": field 'format_version' is ",
                    version, ", this switchyard reads version ", kRoutingTraceFormatVersion);
  const int64_t L = f.integer("num_layers", 1);
  const std::vector<int64_t> experts = f.integers("experts_per_layer", 1, L);
  const int64_t R = f.integer("num_ranks", 1);
  const double decay = f.number("ema_decay", 0.0, 1.0);
  const int64_t steps = f.integer("steps", 0);
  const std::vector<int64_t> top_k = f.integers("top_k", 0, L);
  const std::vector<int64_t> skipped = f.integers("transitions_skipped", 0, L);
  const json& totals = f.at("total_tokens");
  TORCH_CHECK_VALUE(totals.is_array() && static_cast<int64_t>(totals.size()) == L, "routing trace ", path,
                    ": field 'total_tokens' must be a list of ", L, " numbers, got ", totals.dump());
  const json& model = f.at("model");
  const Fields mf(model, path);
  const int64_t d_model = mf.integer("d_model", 0);
  const json& names = mf.at("moe_layer_names");
  const json& routers = mf.at("routers");
  TORCH_CHECK_VALUE(names.is_array() && static_cast<int64_t>(names.size()) == L && routers.is_array() &&
                        static_cast<int64_t>(routers.size()) == L,
                    "routing trace ", path, ": fields 'model.moe_layer_names' and 'model.routers' must be lists of ",
                    L, " strings");

  RoutingTrace trace{path, version, RoutingStatistics(experts, R, 0, decay), {}, {}};
  std::vector<LayerInfo> info(L);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t E = experts[l];
    auto read = [&](const char* what, std::vector<int64_t> shape) {
      const std::string name = tensor_name(l, what);
      TORCH_CHECK_VALUE(reader.entries().count(name) == 1, "routing trace ", path, ": tensor '", name,
                        "' is missing");
      const checkpoint::SafetensorsEntry& e = reader.entry(name);
      TORCH_CHECK_VALUE(e.dtype == at::kDouble && e.shape == shape, "routing trace ", path, ": tensor '", name,
                        "' must be float64 of shape ", c10::IntArrayRef(shape), " (experts_per_layer ",
                        c10::IntArrayRef(experts), ", num_ranks ", R, "), got ", e.dtype, " ",
                        c10::IntArrayRef(e.shape));
      at::Tensor t = reader.read(name);
      const json& crcs = f.at("crc32");
      TORCH_CHECK_VALUE(crcs.is_object() && crcs.contains(name) && crcs.at(name).is_number_integer(),
                        "routing trace ", path, ": field 'crc32' has no checksum for tensor '", name, "'");
      TORCH_CHECK_VALUE(crcs.at(name).get<int64_t>() == crc_of(t), "routing trace ", path, ": tensor '", name,
                        "' is corrupt (CRC-32 ", crc_of(t), ", field 'crc32' records ", crcs.at(name).dump(), ")");
      TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>() && (t >= 0).all().item<bool>(), "routing trace ",
                        path, ": tensor '", name, "' has negative or non-finite counts");
      return t;
    };
    LayerStatistics st;
    st.num_experts = E;
    st.tokens = read("tokens", {E});
    st.tokens_ema = read("tokens_ema", {E});
    st.traffic = read("traffic", {R, E});
    st.coactivation = read("coactivation", {E, E});
    if (l + 1 < L) st.transitions = read("transitions", {E, experts[l + 1]});
    st.transitions_skipped = skipped[l];
    const double total = st.tokens.sum().item<double>();
    TORCH_CHECK_VALUE(totals[l].is_number() && totals[l].get<double>() == total, "routing trace ", path,
                      ": field 'total_tokens'[", l, "] = ", totals[l].dump(), " but tensor '",
                      tensor_name(l, "tokens"), "' sums to ", total);
    trace.total_tokens.push_back(total);
    trace.statistics.restore(l, std::move(st));
    info[l].top_k = top_k[l];
    info[l].d_model = d_model;
    info[l].name = names[l].is_string() ? names[l].get<std::string>() : "";
    info[l].router = routers[l].is_string() ? routers[l].get<std::string>() : "";
  }
  trace.statistics.set_steps(steps);
  trace.statistics.set_layer_info(std::move(info));
  if (j.contains("created") && j.at("created").is_object()) {
    const json& c = j.at("created");
    trace.created.unix_time = c.value("unix_time", int64_t{0});
    trace.created.utc = c.value("utc", std::string());
    trace.created.host = c.value("host", std::string());
    trace.created.world_size = c.value("world_size", int64_t{0});
    trace.created.note = c.value("note", std::string());
  }
  return trace;
}

void check_trace_matches(const RoutingTrace& trace, const std::vector<int64_t>& experts_per_layer,
                         int64_t num_ranks) {
  const RoutingStatistics& s = trace.statistics;
  const int64_t L = static_cast<int64_t>(experts_per_layer.size());
  TORCH_CHECK_VALUE(s.num_layers() == L, "trace ", trace.path, " was recorded on a model with ", s.num_layers(),
                    " MoE layers, this model has ", L, " (field 'num_layers')");
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK_VALUE(s.experts_per_layer()[l] == experts_per_layer[l], "trace ", trace.path,
                      " was recorded on a model with ", s.experts_per_layer()[l], " experts in MoE layer ", l,
                      ", this model has ", experts_per_layer[l], " (field 'experts_per_layer')");
  }
  TORCH_CHECK_VALUE(s.num_source_ranks() == num_ranks, "trace ", trace.path, " was recorded with ",
                    s.num_source_ranks(), " expert-parallel ranks, this job has ", num_ranks,
                    " (field 'num_ranks')");
}

}  // namespace switchyard::placement
