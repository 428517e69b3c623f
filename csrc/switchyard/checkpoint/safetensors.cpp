#include "switchyard/checkpoint/safetensors.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "switchyard/common/error.h"

namespace switchyard::checkpoint {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

constexpr std::pair<at::ScalarType, const char*> kDtypes[] = {
    {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kHalf, "F16"}, {at::kBFloat16, "BF16"},
    {at::kLong, "I64"},   {at::kInt, "I32"},   {at::kShort, "I16"}, {at::kChar, "I8"},
    {at::kByte, "U8"},    {at::kBool, "BOOL"},
};
// A header larger than this is not a checkpoint shard (and reading it would exhaust memory).
constexpr uint64_t kMaxHeaderBytes = uint64_t{256} << 20;

}  // namespace

std::string safetensors_dtype(at::ScalarType dtype) {
  for (const auto& [t, name] : kDtypes) {
    if (t == dtype) return name;
  }
  TORCH_CHECK_VALUE(false, "safetensors: no safetensors dtype for ", dtype);
}

at::ScalarType scalar_type_of(const std::string& name) {
  for (const auto& [t, n] : kDtypes) {
    if (name == n) return t;
  }
  SWITCHYARD_CHECK(false, "safetensors: unsupported dtype \"", name, "\"");
  return at::kFloat;  // unreachable
}

FileDigest write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK_VALUE(name != "__metadata__" && !header.contains(name), "write_safetensors(", path,
                      "): duplicate or reserved tensor name '", name, "'");
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    header[name] = {{"dtype", safetensors_dtype(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  AtomicFile file(path);
  file.write(&n, sizeof n);
  file.write(text.data(), text.size());
  for (const auto& [name, t] : tensors) {
    const at::Tensor host = t.detach().to(at::kCPU).contiguous();
    if (host.numel() > 0) file.write(host.data_ptr(), static_cast<size_t>(host.nbytes()));
  }
  return file.commit();
}

SafetensorsReader::SafetensorsReader(const std::string& path) : file_(path) {
  SWITCHYARD_CHECK(file_.size() >= 8, "safetensors file ", path, " is truncated: ", file_.size(), " bytes");
  uint64_t n = 0;
  file_.read_at(0, &n, sizeof n);
  SWITCHYARD_CHECK(n <= kMaxHeaderBytes && static_cast<int64_t>(n) <= file_.size() - 8, "safetensors file ", path,
                   " is not valid: header length ", n, " for a ", file_.size(), "-byte file");
  std::string text(n, '\0');
  file_.read_at(8, text.data(), n);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    SWITCHYARD_CHECK(false, "safetensors file ", path, ": the header is not valid JSON (", e.what(), ")");
  }
  SWITCHYARD_CHECK(header.is_object(), "safetensors file ", path, ": the header is not a JSON object");
  const int64_t data_start = 8 + static_cast<int64_t>(n);
  const int64_t data_bytes = file_.size() - data_start;
  try {
    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__") {
        metadata_ = value.get<std::map<std::string, std::string>>();
        continue;
      }
      SafetensorsEntry e;
      const std::string dtype = value.at("dtype").get<std::string>();
      try {
        e.dtype = scalar_type_of(dtype);
      } catch (const switchyard::Error&) {
        SWITCHYARD_CHECK(false, "safetensors file ", path, ": tensor '", name, "' has unsupported dtype \"", dtype, "\"");
      }
      e.shape = value.at("shape").get<std::vector<int64_t>>();
      e.numel = 1;
      for (int64_t d : e.shape) {
        SWITCHYARD_CHECK(d >= 0, "safetensors file ", path, ": tensor '", name, "' has a negative dimension");
        e.numel *= d;
      }
      const auto offsets = value.at("data_offsets").get<std::vector<int64_t>>();
      SWITCHYARD_CHECK(offsets.size() == 2 && 0 <= offsets[0] && offsets[0] <= offsets[1] && offsets[1] <= data_bytes,
                       "safetensors file ", path, ": tensor '", name, "' has data offsets outside the file's ",
                       data_bytes, " data bytes");
      const int64_t bytes = e.numel * static_cast<int64_t>(c10::elementSize(e.dtype));
      SWITCHYARD_CHECK(offsets[1] - offsets[0] == bytes, "safetensors file ", path, ": tensor '", name, "' spans ",
                       offsets[1] - offsets[0], " bytes but its shape and dtype need ", bytes);
      e.begin = data_start + offsets[0];
      entries_.emplace(name, std::move(e));
    }
  } catch (const nlohmann::json::exception& e) {
    SWITCHYARD_CHECK(false, "safetensors file ", path, ": malformed header (", e.what(), ")");
  }
}

const SafetensorsEntry& SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  SWITCHYARD_CHECK(it != entries_.end(), "safetensors file ", path(), " has no tensor '", name, "'");
  return it->second;
}

void SafetensorsReader::read_elements(const std::string& name, int64_t start, int64_t count,
                                      const at::Tensor& out) const {
  const SafetensorsEntry& e = entry(name);
  SWITCHYARD_CHECK(start >= 0 && count >= 0 && start + count <= e.numel, "safetensors file ", path(), ": elements [",
                   start, ", ", start + count, ") of '", name, "' are outside its ", e.numel);
  TORCH_CHECK(out.is_cpu() && out.is_contiguous() && out.scalar_type() == e.dtype && out.numel() == count,
              "SafetensorsReader.read_elements: out must be a contiguous CPU ", e.dtype, " tensor of ", count,
              " elements");
  if (count == 0) return;
  const int64_t elem = static_cast<int64_t>(c10::elementSize(e.dtype));
  file_.read_at(e.begin + start * elem, out.data_ptr(), static_cast<size_t>(count * elem));
}

at::Tensor SafetensorsReader::read(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  at::Tensor out = at::empty({e.numel}, at::TensorOptions().dtype(e.dtype));
  read_elements(name, 0, e.numel, out);
  return out.view(e.shape);
}

}  // namespace switchyard::checkpoint
