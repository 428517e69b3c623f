// The safetensors file format (Hugging Face's; readable by `safetensors`, `transformers` and
// torch users without switchyard):
//
//   [8 bytes: header length N, little-endian u64][N bytes: JSON header][tensor bytes]
//   header = {"__metadata__": {"key": "value", ...},
//             "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//
// Offsets are relative to the first byte after the header; tensors are packed in the order
// given, C-contiguous, in the machine's (little-endian) byte order. The header is padded
// with spaces to a multiple of 8 bytes so every tensor starts aligned.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/checkpoint/file_io.h"

namespace switchyard::checkpoint {

// "F32", "BF16", "I64", ... <-> at::ScalarType; unknown names / dtypes throw, naming them.
std::string safetensors_dtype(at::ScalarType dtype);
at::ScalarType scalar_type_of(const std::string& safetensors_dtype);

// Writes `tensors` (any device; each copied to the host in turn) to `path` atomically
// (Note [Atomic checkpoint writes]). Names must be unique and not "__metadata__".
FileDigest write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const std::map<std::string, std::string>& metadata = {});

struct SafetensorsEntry {
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  int64_t begin = 0;  // absolute byte offset in the file
};

// Reads a safetensors file by positioned reads, so a caller takes only the ranges it needs.
// The header is validated against the file (offsets in bounds, sizes matching shapes);
// every error names the file.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  const std::string& path() const { return file_.path(); }
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry& entry(const std::string& name) const;

  // Elements [start, start + count) of `name` flattened, into `out` (a contiguous CPU
  // tensor of the entry's dtype and `count` elements).
  void read_elements(const std::string& name, int64_t start, int64_t count, const at::Tensor& out) const;
  at::Tensor read(const std::string& name) const;  // the whole tensor, on the CPU

 private:
  ReadOnlyFile file_;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace switchyard::checkpoint
