// route_topk on CUDA.
//
//   1. one thread per row routes its token (routing_math.h: score, select, weigh), counts
//      its selections per expert with atomics and writes one sort key per slot: the expert,
//      or E_r for a slot of a local expert;
//   2. a stable radix sort of the slot ids by key groups them by (expert, token): the slot
//      ids start in ascending order, which is token order;
//   3. with a capacity: each expert's slots are ranked by position (the sorted order) or by
//      weight (a stable segmented sort, descending), those ranked C or later are dropped,
//      and a second radix sort regroups the kept slots with the dropped ones in the tail;
//   4. the grouped outputs and the counts are written.
// Everything is enqueued on the caller's stream; nothing synchronizes with the host.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include <stdexcept>

#include "kernels/routing/cuda_utils.cuh"
#include "kernels/routing/routing_cuda.h"
#include "kernels/routing/routing_math.h"

namespace switchyard::kernels {
namespace {

using cuda_detail::bits_for;
using cuda_detail::blocks_for;
using cuda_detail::kThreads;

// ---- forward ---------------------------------------------------------------------------------

template <typename acc_t>
struct TopkWorkspace {
  unsigned long long* load = nullptr;   // [E] selections per expert
  int64_t* segment_begin = nullptr;     // [E_r + 1] capped: exclusive scan of load
  uint32_t* keys = nullptr;             // [S] expert of the slot, E_r for the tail
  uint32_t* keys_sorted = nullptr;      // [S]
  int32_t* slots = nullptr;             // [S] slot ids
  int32_t* slots_sorted = nullptr;      // [S]
  uint8_t* dropped = nullptr;           // [S] capped
  acc_t* weight_keys = nullptr;         // [S] capped by score: weight of each grouped slot
  acc_t* weight_keys_sorted = nullptr;  // [S]
  int32_t* slots_ranked = nullptr;      // [S]
  acc_t* row_scratch = nullptr;         // [T * topk_row_scratch_size]
  void* sort_temp = nullptr;
  size_t sort_temp_bytes = 0;
  size_t total_bytes = 0;
};

template <typename acc_t>
TopkWorkspace<acc_t> carve_topk_workspace(void* base, const TopkRouterParams& p) {
  const int64_t S = p.num_tokens * p.k, E = p.num_experts, Er = p.num_routed_experts;
  const bool capped = p.capacity >= 0;
  const bool by_score = capped && p.drop_policy == DropPolicy::kScore;
  cuda_detail::WorkspaceCarver carver(base);
  TopkWorkspace<acc_t> w;
  w.load = carver.take<unsigned long long>(E);
  w.segment_begin = carver.take<int64_t>(Er + 1);
  w.keys = carver.take<uint32_t>(S);
  w.keys_sorted = carver.take<uint32_t>(S);
  w.slots = carver.take<int32_t>(S);
  w.slots_sorted = carver.take<int32_t>(S);
  if (capped) w.dropped = carver.take<uint8_t>(S);
  if (by_score) {
    w.weight_keys = carver.take<acc_t>(S);
    w.weight_keys_sorted = carver.take<acc_t>(S);
    w.slots_ranked = carver.take<int32_t>(S);
  }
  w.row_scratch = carver.take<acc_t>(p.num_tokens * topk_row_scratch_size(make_topk_row_config(p)));
  if (S > 0) {
    size_t radix_bytes = 0, segmented_bytes = 0;
    SWITCHYARD_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
        nullptr, radix_bytes, static_cast<const uint32_t*>(nullptr),
        static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
        static_cast<int32_t*>(nullptr), S, 0, bits_for(Er)));
    if (by_score) {
      SWITCHYARD_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
          nullptr, segmented_bytes, static_cast<const acc_t*>(nullptr),
          static_cast<acc_t*>(nullptr), static_cast<const int32_t*>(nullptr),
          static_cast<int32_t*>(nullptr), S, Er, static_cast<const int64_t*>(nullptr),
          static_cast<const int64_t*>(nullptr)));
    }
    w.sort_temp_bytes = radix_bytes > segmented_bytes ? radix_bytes : segmented_bytes;
  }
  w.sort_temp = carver.take_bytes(w.sort_temp_bytes);
  w.total_bytes = carver.bytes();
  return w;
}

template <class Fmt>
__global__ void route_rows_kernel(const typename Fmt::storage_t* __restrict__ logits,
                                  const typename Fmt::acc_t* __restrict__ bias,
                                  const TopkRowConfig cfg, int64_t T, int64_t scratch_size,
                                  typename Fmt::acc_t* __restrict__ topk_w,
                                  int64_t* __restrict__ topk_e,
                                  typename Fmt::acc_t* __restrict__ scratch,
                                  unsigned long long* __restrict__ load,
                                  uint32_t* __restrict__ keys, int32_t* __restrict__ slots) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  const int64_t E = cfg.num_experts, K = cfg.k;
  topk_route_row<Fmt>(logits + t * E, bias, cfg, topk_w + t * K, topk_e + t * K,
                      scratch + t * scratch_size);
  for (int64_t j = 0; j < K; ++j) {
    const int64_t slot = t * K + j;
    const int64_t e = topk_e[slot];
    atomicAdd(load + e, 1ull);
    keys[slot] = static_cast<uint32_t>(e < cfg.num_routed ? e : cfg.num_routed);
    slots[slot] = static_cast<int32_t>(slot);
  }
}

// segment_begin[e] = sum of load[0, e) over the routed experts; one thread (E_r is small).
__global__ void segment_begin_kernel(const unsigned long long* __restrict__ load, int64_t Er,
                                     int64_t* __restrict__ segment_begin) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t run = 0;
  for (int64_t e = 0; e < Er; ++e) {
    segment_begin[e] = run;
    run += static_cast<int64_t>(load[e]);
  }
  segment_begin[Er] = run;
}

template <typename acc_t>
__global__ void gather_weight_keys_kernel(const int32_t* __restrict__ slots_sorted,
                                          const int64_t* __restrict__ segment_begin, int64_t Er,
                                          int64_t S, const acc_t* __restrict__ topk_w,
                                          acc_t* __restrict__ weight_keys) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= S || i >= segment_begin[Er]) return;
  weight_keys[i] = topk_w[slots_sorted[i]];
}

// Slots ranked C or later within their expert are dropped; their weight becomes 0.
template <typename acc_t>
__global__ void mark_dropped_kernel(const int32_t* __restrict__ ranked,
                                    const int64_t* __restrict__ segment_begin,
                                    const int64_t* __restrict__ topk_e, int64_t Er, int64_t S,
                                    int64_t C, uint8_t* __restrict__ dropped,
                                    acc_t* __restrict__ topk_w) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= S || i >= segment_begin[Er]) return;
  const int32_t slot = ranked[i];
  if (i - segment_begin[topk_e[slot]] >= C) {
    dropped[slot] = 1;
    topk_w[slot] = acc_t(0);
  }
}

__global__ void rekey_kernel(const int64_t* __restrict__ topk_e,
                             const uint8_t* __restrict__ dropped, int64_t Er, int64_t S,
                             uint32_t* __restrict__ keys, int32_t* __restrict__ slots) {
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (slot >= S) return;
  const int64_t e = topk_e[slot];
  keys[slot] = static_cast<uint32_t>(e < Er && dropped[slot] == 0 ? e : Er);
  slots[slot] = static_cast<int32_t>(slot);
}

template <typename acc_t>
__global__ void write_grouped_kernel(const uint32_t* __restrict__ keys_sorted,
                                     const int32_t* __restrict__ slots_sorted,
                                     const acc_t* __restrict__ topk_w, int64_t Er, int64_t K,
                                     int64_t S, int64_t* __restrict__ token_index,
                                     int64_t* __restrict__ expert_index,
                                     int64_t* __restrict__ slot_index,
                                     acc_t* __restrict__ slot_w) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= S) return;
  const int64_t slot = slots_sorted[i];
  const int64_t key = keys_sorted[i];
  const bool routed = key < Er;
  token_index[i] = slot / K;
  expert_index[i] = routed ? key : -1;
  slot_index[i] = slot;
  slot_w[i] = routed ? topk_w[slot] : acc_t(0);
}

// One block: expert_load, expert_counts = min(load, C), num_dropped.
__global__ void write_counts_kernel(const unsigned long long* __restrict__ load, int64_t E,
                                    int64_t Er, int64_t C, int64_t* __restrict__ expert_load,
                                    int64_t* __restrict__ expert_counts,
                                    int64_t* __restrict__ num_dropped) {
  __shared__ unsigned long long block_dropped;
  if (threadIdx.x == 0) block_dropped = 0;
  __syncthreads();
  unsigned long long local = 0;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    const int64_t l = static_cast<int64_t>(load[e]);
    expert_load[e] = l;
    if (e < Er) {
      const int64_t kept = C >= 0 && l > C ? C : l;
      expert_counts[e] = kept;
      local += static_cast<unsigned long long>(l - kept);
    }
  }
  atomicAdd(&block_dropped, local);
  __syncthreads();
  if (threadIdx.x == 0) *num_dropped = static_cast<int64_t>(block_dropped);
}

template <class Fmt>
void topk_router_cuda_impl(const typename Fmt::storage_t* logits,
                           const typename Fmt::acc_t* bias, const TopkRouterParams& p,
                           const TopkRouterOutputs& out, void* workspace,
                           size_t workspace_bytes, cudaStream_t stream) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, K = p.k, Er = p.num_routed_experts;
  const int64_t S = T * K, C = p.capacity;
  const bool capped = C >= 0;
  auto* topk_w = static_cast<acc_t*>(out.topk_weights);
  auto* slot_w = static_cast<acc_t*>(out.slot_weights);
  if (S == 0) {
    SWITCHYARD_CUDA_CHECK(cudaMemsetAsync(out.expert_load, 0, E * sizeof(int64_t), stream));
    SWITCHYARD_CUDA_CHECK(cudaMemsetAsync(out.expert_counts, 0, Er * sizeof(int64_t), stream));
    SWITCHYARD_CUDA_CHECK(cudaMemsetAsync(out.num_dropped, 0, sizeof(int64_t), stream));
    return;
  }
  TopkWorkspace<acc_t> w = carve_topk_workspace<acc_t>(workspace, p);
  if (workspace_bytes < w.total_bytes) {
    throw std::invalid_argument("topk_router_cuda: workspace of " +
                                std::to_string(workspace_bytes) + " bytes, needs " +
                                std::to_string(w.total_bytes));
  }
  const TopkRowConfig cfg = make_topk_row_config(p);
  const int bits = bits_for(Er);

  // 1. route every row
  SWITCHYARD_CUDA_CHECK(cudaMemsetAsync(w.load, 0, E * sizeof(unsigned long long), stream));
  route_rows_kernel<Fmt><<<blocks_for(T), kThreads, 0, stream>>>(
      logits, bias, cfg, T, topk_row_scratch_size(cfg), topk_w, out.topk_experts,
      w.row_scratch, w.load, w.keys, w.slots);
  SWITCHYARD_CUDA_CHECK_LAUNCH();

  // 2. group the slots by expert (stable: token order within an expert)
  size_t temp_bytes = w.sort_temp_bytes;
  SWITCHYARD_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(w.sort_temp, temp_bytes, w.keys,
                                                        w.keys_sorted, w.slots, w.slots_sorted,
                                                        S, 0, bits, stream));

  if (capped) {
    // 3. rank each expert's slots, drop those ranked C or later, regroup
    segment_begin_kernel<<<1, 1, 0, stream>>>(w.load, Er, w.segment_begin);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
    const int32_t* ranked = w.slots_sorted;
    if (p.drop_policy == DropPolicy::kScore) {
      gather_weight_keys_kernel<acc_t><<<blocks_for(S), kThreads, 0, stream>>>(
          w.slots_sorted, w.segment_begin, Er, S, topk_w, w.weight_keys);
      SWITCHYARD_CUDA_CHECK_LAUNCH();
      temp_bytes = w.sort_temp_bytes;
      SWITCHYARD_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
          w.sort_temp, temp_bytes, w.weight_keys, w.weight_keys_sorted, w.slots_sorted,
          w.slots_ranked, S, Er, w.segment_begin, w.segment_begin + 1, stream));
      ranked = w.slots_ranked;
    }
    SWITCHYARD_CUDA_CHECK(cudaMemsetAsync(w.dropped, 0, S, stream));
    mark_dropped_kernel<acc_t><<<blocks_for(S), kThreads, 0, stream>>>(
        ranked, w.segment_begin, out.topk_experts, Er, S, C, w.dropped, topk_w);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
    rekey_kernel<<<blocks_for(S), kThreads, 0, stream>>>(out.topk_experts, w.dropped, Er, S,
                                                         w.keys, w.slots);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
    temp_bytes = w.sort_temp_bytes;
    SWITCHYARD_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(w.sort_temp, temp_bytes, w.keys,
                                                          w.keys_sorted, w.slots,
                                                          w.slots_sorted, S, 0, bits, stream));
  }

  // 4. outputs
  write_grouped_kernel<acc_t><<<blocks_for(S), kThreads, 0, stream>>>(
      w.keys_sorted, w.slots_sorted, topk_w, Er, K, S, out.token_index, out.expert_index,
      out.slot_index, slot_w);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
  write_counts_kernel<<<1, 256, 0, stream>>>(w.load, E, Er, C, out.expert_load,
                                             out.expert_counts, out.num_dropped);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
}

// ---- backward --------------------------------------------------------------------------------

template <typename acc_t>
struct TopkBackwardWorkspace {
  acc_t* grad = nullptr;    // [S] dL/dw per slot
  int64_t* kept = nullptr;  // [1] kept routed slots = sum(expert_counts)
  size_t total_bytes = 0;
};

template <typename acc_t>
TopkBackwardWorkspace<acc_t> carve_backward_workspace(void* base, const TopkBackwardParams& p) {
  cuda_detail::WorkspaceCarver carver(base);
  TopkBackwardWorkspace<acc_t> w;
  w.grad = carver.take<acc_t>(p.num_tokens * p.k);
  w.kept = carver.take<int64_t>(1);
  w.total_bytes = carver.bytes();
  return w;
}

template <typename acc_t>
__global__ void init_slot_grad_kernel(const int64_t* __restrict__ topk_e,
                                      const acc_t* __restrict__ grad_topk, int64_t Er, int64_t S,
                                      acc_t* __restrict__ grad) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= S) return;
  grad[s] = topk_e[s] >= Er ? grad_topk[s] : acc_t(0);
}

__global__ void sum_counts_kernel(const int64_t* __restrict__ counts, int64_t Er, int64_t S,
                                  int64_t* __restrict__ kept) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  int64_t total = 0;
  for (int64_t e = 0; e < Er; ++e) total += counts[e];
  *kept = total < S ? total : S;
}

template <typename acc_t>
__global__ void scatter_slot_grad_kernel(const int64_t* __restrict__ slot_index,
                                         const acc_t* __restrict__ grad_topk,
                                         const acc_t* __restrict__ grad_slot,
                                         const int64_t* __restrict__ kept, int64_t S,
                                         acc_t* __restrict__ grad) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= S || i >= *kept) return;
  const int64_t s = slot_index[i];
  grad[s] = grad_topk[s] + grad_slot[i];
}

template <class Fmt>
__global__ void backward_rows_kernel(const typename Fmt::storage_t* __restrict__ logits,
                                     const int64_t* __restrict__ topk_e,
                                     const typename Fmt::acc_t* __restrict__ grad, int64_t T,
                                     int64_t E, int64_t K, ScoreFunc score_func,
                                     bool renormalize, double scaling_factor,
                                     typename Fmt::acc_t* __restrict__ grad_logits) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  topk_backward_row<Fmt>(logits + t * E, E, K, topk_e + t * K, grad + t * K, score_func,
                         renormalize, scaling_factor, grad_logits + t * E);
}

template <class Fmt>
void topk_router_backward_cuda_impl(const typename Fmt::storage_t* logits,
                                    const TopkBackwardInputs& in, const TopkBackwardParams& p,
                                    typename Fmt::acc_t* grad_logits, void* workspace,
                                    size_t workspace_bytes, cudaStream_t stream) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, K = p.k, Er = p.num_routed_experts;
  const int64_t S = T * K;
  if (T == 0) return;
  TopkBackwardWorkspace<acc_t> w = carve_backward_workspace<acc_t>(workspace, p);
  if (workspace_bytes < w.total_bytes) {
    throw std::invalid_argument("topk_router_backward_cuda: workspace of " +
                                std::to_string(workspace_bytes) + " bytes, needs " +
                                std::to_string(w.total_bytes));
  }
  const auto* grad_topk = static_cast<const acc_t*>(in.grad_topk_weights);
  const auto* grad_slot = static_cast<const acc_t*>(in.grad_slot_weights);
  // 1. dL/dw per slot (a dropped slot's weight is the constant 0: no gradient)
  init_slot_grad_kernel<acc_t><<<blocks_for(S), kThreads, 0, stream>>>(in.topk_experts,
                                                                       grad_topk, Er, S, w.grad);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
  sum_counts_kernel<<<1, 1, 0, stream>>>(in.expert_counts, Er, S, w.kept);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
  scatter_slot_grad_kernel<acc_t><<<blocks_for(S), kThreads, 0, stream>>>(
      in.slot_index, grad_topk, grad_slot, w.kept, S, w.grad);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
  // 2. per row, through the normalisation and the score function
  backward_rows_kernel<Fmt><<<blocks_for(T), kThreads, 0, stream>>>(
      logits, in.topk_experts, w.grad, T, E, K, p.score_func, p.renormalize, p.scaling_factor,
      grad_logits);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t topk_router_cuda_workspace_bytes(LogitsType type, const TopkRouterParams& p) {
  return type == LogitsType::kFloat64 ? carve_topk_workspace<double>(nullptr, p).total_bytes
                                      : carve_topk_workspace<float>(nullptr, p).total_bytes;
}

void topk_router_cuda(const void* logits, LogitsType type, const void* bias,
                      const TopkRouterParams& p, const TopkRouterOutputs& out, void* workspace,
                      size_t workspace_bytes, cudaStream_t stream) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    using acc_t = typename Fmt::acc_t;
    topk_router_cuda_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits),
                               p.has_bias ? static_cast<const acc_t*>(bias) : nullptr, p, out,
                               workspace, workspace_bytes, stream);
  });
}

size_t topk_router_backward_cuda_workspace_bytes(LogitsType type, const TopkBackwardParams& p) {
  return type == LogitsType::kFloat64 ? carve_backward_workspace<double>(nullptr, p).total_bytes
                                      : carve_backward_workspace<float>(nullptr, p).total_bytes;
}

void topk_router_backward_cuda(const void* logits, LogitsType type,
                               const TopkBackwardInputs& in, const TopkBackwardParams& p,
                               void* grad_logits, void* workspace, size_t workspace_bytes,
                               cudaStream_t stream) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    topk_router_backward_cuda_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits), in,
                                        p, static_cast<typename Fmt::acc_t*>(grad_logits),
                                        workspace, workspace_bytes, stream);
  });
}

}  // namespace switchyard::kernels
