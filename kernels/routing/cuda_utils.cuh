// Small helpers for the routing CUDA kernels: error checking, launch sizes, workspace
// carving. Device code only (.cu files).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

// Throws std::runtime_error naming the call, the file:line and CUDA's decoded error.
#define SWITCHYARD_CUDA_CHECK(expr)                                                        \
  do {                                                                                     \
    const cudaError_t sy_cuda_err_ = (expr);                                               \
    if (sy_cuda_err_ != cudaSuccess) {                                                     \
      throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorName(sy_cuda_err_) + \
                               " (" + cudaGetErrorString(sy_cuda_err_) + ") in " #expr     \
                               " [" __FILE__ ":" + std::to_string(__LINE__) + "]");        \
    }                                                                                      \
  } while (0)

// Checks the launch of the kernel just enqueued.
#define SWITCHYARD_CUDA_CHECK_LAUNCH() SWITCHYARD_CUDA_CHECK(cudaGetLastError())

namespace switchyard::kernels::cuda_detail {

constexpr int kThreads = 128;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

// Carves typed, 256-byte-aligned buffers out of one workspace allocation. With a null base
// it only measures, so the *_workspace_bytes functions and the launchers share one layout.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base) : base_(static_cast<char*>(base)) {}

  template <typename T>
  T* take(int64_t count) {
    offset_ = (offset_ + 255) / 256 * 256;
    T* p = base_ != nullptr ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += static_cast<size_t>(count) * sizeof(T);
    return p;
  }

  void* take_bytes(size_t bytes) { return take<char>(static_cast<int64_t>(bytes)); }
  size_t bytes() const { return offset_; }

 private:
  char* base_;
  size_t offset_ = 0;
};

// Number of bits that hold every value in [0, max_value].
inline int bits_for(int64_t max_value) {
  int bits = 1;
  while ((int64_t{1} << bits) <= max_value) ++bits;
  return bits;
}

}  // namespace switchyard::kernels::cuda_detail
