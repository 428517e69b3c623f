#include "switchyard/comm/string_gather.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

namespace switchyard::comm {

std::vector<std::string> all_gather_strings(Communicator group, const std::string& mine) {
  const int size = group.size();
  if (size == 1) return {mine};
  const at::Tensor lens = group.all_gather(at::tensor({static_cast<int64_t>(mine.size())}, at::kLong));
  const int64_t max_len = std::max<int64_t>(lens.max().item<int64_t>(), 1);
  at::Tensor buf = at::zeros({max_len}, at::kByte);
  std::memcpy(buf.data_ptr<uint8_t>(), mine.data(), mine.size());
  const at::Tensor all = group.all_gather(buf).view({size, max_len}).contiguous();
  std::vector<std::string> out;
  out.reserve(size);
  for (int r = 0; r < size; ++r) {
    const auto* p = reinterpret_cast<const char*>(all.data_ptr<uint8_t>() + r * max_len);
    out.emplace_back(p, static_cast<size_t>(lens[r].item<int64_t>()));
  }
  return out;
}

}  // namespace switchyard::comm
