// Token permutation on CUDA.
//
//   permute_tokens: one warp per slot copies its row with the widest aligned word (16, 8,
//     4 or 2 bytes) that divides the row and both base addresses.
//   unpermute_tokens:
//     1. one thread per slot writes a sort key: its token, or T for slots of the tail
//        (checking the token id), and its slot number as the value;
//     2. a radix sort (stable: a token's slots stay in ascending slot order) groups the
//        slots by token; a binary search per token finds where each token's slots begin;
//     3. one warp per token sums its rows in that order, each lane owning 16-byte packs of
//        the row, in the accumulation type (row_format.h).
//   unpermute_tokens_backward: one warp per slot; each lane writes grad_rows for its packs
//     and accumulates its part of the dot product, which a butterfly of warp shuffles
//     combines (a fixed order: deterministic).
// Everything is enqueued on the caller's stream; nothing synchronizes with the host.
#include <cub/device/device_radix_sort.cuh>

#include <stdexcept>
#include <string>

#include "kernels/permute/permute_cuda.h"
#include "kernels/permute/row_format.h"
#include "kernels/routing/cuda_utils.cuh"

// A device-side check that survives release builds (NDEBUG empties assert()): a failure
// prints the message with file and line and stops the kernel; the host sees
// cudaErrorAssert at its next synchronization.
#define SWITCHYARD_DEVICE_CHECK(cond, msg)                                          \
  do {                                                                              \
    if (!(cond)) __assert_fail(msg, __FILE__, static_cast<unsigned>(__LINE__), __func__); \
  } while (0)

namespace switchyard::kernels {
namespace {

using cuda_detail::bits_for;
using cuda_detail::blocks_for;
using cuda_detail::kThreads;

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int kPackBytes = 16;

unsigned int blocks_for_warps(int64_t warps) {
  return static_cast<unsigned int>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

__device__ __forceinline__ int64_t warp_index() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
}

// V elements moved as one aligned load or store.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// ---- permute_tokens ---------------------------------------------------------------------

template <typename Word>
__global__ void permute_kernel(const Word* __restrict__ x, const int64_t* __restrict__ token_index,
                               const int64_t* __restrict__ expert_index, int64_t S, int64_t T,
                               int64_t words, Word* __restrict__ rows) {
  const int64_t i = warp_index();
  if (i >= S) return;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  Word* dst = rows + i * words;
  if (expert_index[i] < 0) {
    for (int64_t c = lane; c < words; c += kWarp) dst[c] = Word{};
    return;
  }
  const int64_t t = token_index[i];
  SWITCHYARD_DEVICE_CHECK(
      t >= 0 && t < T, "permute_tokens: a token_index of a valid slot is outside [0, num_tokens)");
  const Word* src = x + t * words;
  for (int64_t c = lane; c < words; c += kWarp) dst[c] = src[c];
}

template <typename Word>
void launch_permute(const void* x, const int64_t* token_index, const int64_t* expert_index,
                    const PermuteParams& p, int64_t row_bytes, void* rows, cudaStream_t stream) {
  permute_kernel<Word><<<blocks_for_warps(p.num_slots), kThreads, 0, stream>>>(
      static_cast<const Word*>(x), token_index, expert_index, p.num_slots, p.num_tokens,
      row_bytes / static_cast<int64_t>(sizeof(Word)), static_cast<Word*>(rows));
  SWITCHYARD_CUDA_CHECK_LAUNCH();
}

// ---- unpermute_tokens -------------------------------------------------------------------

struct UnpermuteWorkspace {
  uint32_t* keys = nullptr;         // [S] token of each slot, T for the tail
  uint32_t* keys_sorted = nullptr;  // [S]
  int32_t* slots = nullptr;         // [S] 0..S-1
  int32_t* slots_sorted = nullptr;  // [S] slots grouped by token, ascending within a token
  int32_t* offsets = nullptr;       // [T+1] where each token's slots begin in slots_sorted
  void* sort_temp = nullptr;
  size_t sort_temp_bytes = 0;
  size_t total_bytes = 0;
};

UnpermuteWorkspace carve_workspace(void* base, const PermuteParams& p) {
  const int64_t S = p.num_slots, T = p.num_tokens;
  cuda_detail::WorkspaceCarver carver(base);
  UnpermuteWorkspace w;
  w.keys = carver.take<uint32_t>(S);
  w.keys_sorted = carver.take<uint32_t>(S);
  w.slots = carver.take<int32_t>(S);
  w.slots_sorted = carver.take<int32_t>(S);
  w.offsets = carver.take<int32_t>(T + 1);
  if (S > 0) {
    SWITCHYARD_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, w.sort_temp_bytes, static_cast<const uint32_t*>(nullptr),
        static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
        static_cast<int32_t*>(nullptr), S, 0, bits_for(T)));
  }
  w.sort_temp = carver.take_bytes(w.sort_temp_bytes);
  w.total_bytes = carver.bytes();
  return w;
}

__global__ void token_keys_kernel(const int64_t* __restrict__ token_index,
                                  const int64_t* __restrict__ expert_index, int64_t S, int64_t T,
                                  uint32_t* __restrict__ keys, int32_t* __restrict__ slots) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= S) return;
  int64_t key = T;
  if (expert_index[i] >= 0) {
    key = token_index[i];
    SWITCHYARD_DEVICE_CHECK(
        key >= 0 && key < T,
        "unpermute_tokens: a token_index of a valid slot is outside [0, num_tokens)");
  }
  keys[i] = static_cast<uint32_t>(key);
  slots[i] = static_cast<int32_t>(i);
}

// offsets[t] = number of sorted keys below t, for t in [0, T].
__global__ void token_offsets_kernel(const uint32_t* __restrict__ keys_sorted, int64_t S,
                                     int64_t T, int32_t* __restrict__ offsets) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t > T) return;
  int64_t lo = 0, hi = S;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<int64_t>(keys_sorted[mid]) < t) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  offsets[t] = static_cast<int32_t>(lo);
}

template <class Fmt, int V>
__global__ void unpermute_kernel(const typename Fmt::storage_t* __restrict__ rows,
                                 const typename Fmt::acc_t* __restrict__ weights,
                                 const int32_t* __restrict__ offsets,
                                 const int32_t* __restrict__ slots_sorted, int64_t T, int64_t d,
                                 typename Fmt::storage_t* __restrict__ y) {
  using acc_t = typename Fmt::acc_t;
  using P = Pack<typename Fmt::storage_t, V>;
  const int64_t t = warp_index();
  if (t >= T) return;
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int32_t begin = offsets[t], end = offsets[t + 1];
  const int64_t packs = d / V;
  for (int64_t c = lane; c < packs; c += kWarp) {
    acc_t acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = acc_t(0);
    for (int32_t k = begin; k < end; ++k) {
      const int64_t i = slots_sorted[k];
      const acc_t w = weights != nullptr ? weights[i] : acc_t(1);
      const P r = reinterpret_cast<const P*>(rows + i * d)[c];
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = mul_add_rn(acc[v], w, Fmt::load(r.v[v]));
    }
    P out;
#pragma unroll
    for (int v = 0; v < V; ++v) out.v[v] = Fmt::store(acc[v]);
    reinterpret_cast<P*>(y + t * d)[c] = out;
  }
}

// 16-byte packs when the row length and both base addresses allow, else single elements.
template <class Fmt>
int pack_width(int64_t d, const void* a, const void* b) {
  constexpr int kV = kPackBytes / static_cast<int>(sizeof(typename Fmt::storage_t));
  const bool packed = d % kV == 0 && aligned_to(a, kPackBytes) && aligned_to(b, kPackBytes);
  return packed ? kV : 1;
}

template <class Fmt>
void unpermute_cuda_impl(const void* rows, const int64_t* token_index,
                         const int64_t* expert_index, const void* weights,
                         const PermuteParams& p, void* y, const UnpermuteWorkspace& w,
                         cudaStream_t stream) {
  using storage_t = typename Fmt::storage_t;
  using acc_t = typename Fmt::acc_t;
  const int64_t S = p.num_slots, T = p.num_tokens, d = p.hidden;
  // 1. sort keys; 2. group by token
  if (S > 0) {
    token_keys_kernel<<<blocks_for(S), kThreads, 0, stream>>>(token_index, expert_index, S, T,
                                                              w.keys, w.slots);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
    size_t temp_bytes = w.sort_temp_bytes;
    SWITCHYARD_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(w.sort_temp, temp_bytes, w.keys,
                                                          w.keys_sorted, w.slots, w.slots_sorted,
                                                          S, 0, bits_for(T), stream));
  }
  if (T == 0 || d == 0) return;
  token_offsets_kernel<<<blocks_for(T + 1), kThreads, 0, stream>>>(w.keys_sorted, S, T,
                                                                   w.offsets);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
  // 3. one warp per token
  constexpr int kV = kPackBytes / static_cast<int>(sizeof(storage_t));
  const auto* r = static_cast<const storage_t*>(rows);
  const auto* wt = static_cast<const acc_t*>(weights);
  auto* out = static_cast<storage_t*>(y);
  if (pack_width<Fmt>(d, rows, y) == kV) {
    unpermute_kernel<Fmt, kV><<<blocks_for_warps(T), kThreads, 0, stream>>>(
        r, wt, w.offsets, w.slots_sorted, T, d, out);
  } else {
    unpermute_kernel<Fmt, 1><<<blocks_for_warps(T), kThreads, 0, stream>>>(
        r, wt, w.offsets, w.slots_sorted, T, d, out);
  }
  SWITCHYARD_CUDA_CHECK_LAUNCH();
}

// ---- unpermute_tokens_backward ----------------------------------------------------------

template <class Fmt, int V, bool kRows, bool kWeights>
__global__ void unpermute_backward_kernel(const typename Fmt::storage_t* __restrict__ grad_y,
                                          const typename Fmt::storage_t* __restrict__ rows,
                                          const int64_t* __restrict__ token_index,
                                          const int64_t* __restrict__ expert_index,
                                          const typename Fmt::acc_t* __restrict__ weights,
                                          int64_t S, int64_t T, int64_t d,
                                          typename Fmt::storage_t* __restrict__ grad_rows,
                                          typename Fmt::acc_t* __restrict__ grad_weights) {
  using acc_t = typename Fmt::acc_t;
  using P = Pack<typename Fmt::storage_t, V>;
  const int64_t i = warp_index();
  if (i >= S) return;  // the whole warp leaves together: the shuffles below stay full
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const int64_t packs = d / V;
  if (expert_index[i] < 0) {
    if constexpr (kRows) {
      P* dst = reinterpret_cast<P*>(grad_rows + i * d);
      for (int64_t c = lane; c < packs; c += kWarp) dst[c] = P{};
    }
    if constexpr (kWeights) {
      if (lane == 0) grad_weights[i] = acc_t(0);
    }
    return;
  }
  const int64_t t = token_index[i];
  SWITCHYARD_DEVICE_CHECK(
      t >= 0 && t < T,
      "unpermute_tokens_backward: a token_index of a valid slot is outside [0, num_tokens)");
  const acc_t w = weights != nullptr ? weights[i] : acc_t(1);
  acc_t part = acc_t(0);
  for (int64_t c = lane; c < packs; c += kWarp) {
    const P g = reinterpret_cast<const P*>(grad_y + t * d)[c];
    if constexpr (kRows) {
      P out;
#pragma unroll
      for (int v = 0; v < V; ++v) out.v[v] = Fmt::store(mul_rn(w, Fmt::load(g.v[v])));
      reinterpret_cast<P*>(grad_rows + i * d)[c] = out;
    }
    if constexpr (kWeights) {
      const P r = reinterpret_cast<const P*>(rows + i * d)[c];
#pragma unroll
      for (int v = 0; v < V; ++v) part = mul_add_rn(part, Fmt::load(r.v[v]), Fmt::load(g.v[v]));
    }
  }
  if constexpr (kWeights) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      part += __shfl_xor_sync(0xffffffffu, part, offset);
    }
    if (lane == 0) grad_weights[i] = part;
  }
}

template <class Fmt, int V, bool kRows, bool kWeights>
void launch_backward(const void* grad_y, const void* rows, const int64_t* token_index,
                     const int64_t* expert_index, const void* weights, const PermuteParams& p,
                     void* grad_rows, void* grad_weights, cudaStream_t stream) {
  using storage_t = typename Fmt::storage_t;
  using acc_t = typename Fmt::acc_t;
  unpermute_backward_kernel<Fmt, V, kRows, kWeights>
      <<<blocks_for_warps(p.num_slots), kThreads, 0, stream>>>(
          static_cast<const storage_t*>(grad_y), static_cast<const storage_t*>(rows),
          token_index, expert_index, static_cast<const acc_t*>(weights), p.num_slots,
          p.num_tokens, p.hidden, static_cast<storage_t*>(grad_rows),
          static_cast<acc_t*>(grad_weights));
  SWITCHYARD_CUDA_CHECK_LAUNCH();
}

template <class Fmt, int V>
void backward_variant(const void* grad_y, const void* rows, const int64_t* token_index,
                      const int64_t* expert_index, const void* weights, const PermuteParams& p,
                      void* grad_rows, void* grad_weights, cudaStream_t stream) {
  if (grad_rows != nullptr && grad_weights != nullptr) {
    launch_backward<Fmt, V, true, true>(grad_y, rows, token_index, expert_index, weights, p,
                                        grad_rows, grad_weights, stream);
  } else if (grad_rows != nullptr) {
    launch_backward<Fmt, V, true, false>(grad_y, rows, token_index, expert_index, weights, p,
                                         grad_rows, grad_weights, stream);
  } else if (grad_weights != nullptr) {
    launch_backward<Fmt, V, false, true>(grad_y, rows, token_index, expert_index, weights, p,
                                         grad_rows, grad_weights, stream);
  }
}

}  // namespace

void permute_tokens_cuda(const void* x, const int64_t* token_index, const int64_t* expert_index,
                         const PermuteParams& p, void* rows, cudaStream_t stream) {
  const int64_t row_bytes = p.hidden * row_type_bytes(p.type);
  if (p.num_slots == 0 || row_bytes == 0) return;
  // the widest word that divides the row and both base addresses (elements are >= 2 bytes)
  const auto fits = [&](int64_t word) {
    return row_bytes % word == 0 && aligned_to(x, word) && aligned_to(rows, word);
  };
  if (fits(16)) {
    launch_permute<uint4>(x, token_index, expert_index, p, row_bytes, rows, stream);
  } else if (fits(8)) {
    launch_permute<uint2>(x, token_index, expert_index, p, row_bytes, rows, stream);
  } else if (fits(4)) {
    launch_permute<uint32_t>(x, token_index, expert_index, p, row_bytes, rows, stream);
  } else {
    launch_permute<uint16_t>(x, token_index, expert_index, p, row_bytes, rows, stream);
  }
}

size_t unpermute_tokens_cuda_workspace_bytes(const PermuteParams& p) {
  return carve_workspace(nullptr, p).total_bytes;
}

void unpermute_tokens_cuda(const void* rows, const int64_t* token_index,
                           const int64_t* expert_index, const void* weights,
                           const PermuteParams& p, void* y, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  const UnpermuteWorkspace w = carve_workspace(workspace, p);
  if (workspace_bytes < w.total_bytes) {
    throw std::invalid_argument("unpermute_tokens_cuda: workspace of " +
                                std::to_string(workspace_bytes) + " bytes, needs " +
                                std::to_string(w.total_bytes));
  }
  dispatch_row_type(p.type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    unpermute_cuda_impl<Fmt>(rows, token_index, expert_index, weights, p, y, w, stream);
  });
}

void unpermute_tokens_backward_cuda(const void* grad_y, const void* rows,
                                    const int64_t* token_index, const int64_t* expert_index,
                                    const void* weights, const PermuteParams& p,
                                    void* grad_rows, void* grad_weights, cudaStream_t stream) {
  if (p.num_slots == 0 || (grad_rows == nullptr && grad_weights == nullptr)) return;
  dispatch_row_type(p.type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    constexpr int kV = kPackBytes / static_cast<int>(sizeof(typename Fmt::storage_t));
    // rows are read only for grad_weights, grad_rows written only when asked for
    const bool packed =
        p.hidden % kV == 0 && aligned_to(grad_y, kPackBytes) &&
        (grad_weights == nullptr || aligned_to(rows, kPackBytes)) &&
        (grad_rows == nullptr || aligned_to(grad_rows, kPackBytes));
    if (packed) {
      backward_variant<Fmt, kV>(grad_y, rows, token_index, expert_index, weights, p, grad_rows,
                                grad_weights, stream);
    } else {
      backward_variant<Fmt, 1>(grad_y, rows, token_index, expert_index, weights, p, grad_rows,
                               grad_weights, stream);
    }
  });
}

}  // namespace switchyard::kernels
