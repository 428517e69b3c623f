// route_expert_choice on CUDA.
//
//   1. one thread per row scores its token (routing_math.h), written expert-major [E,T];
//   2. a stable segmented sort (one segment per expert, descending score, token ids as
//      values starting in ascending order) ranks every expert's tokens, ties to the lower
//      token; each expert keeps its first C;
//   3. a segmented sort of the kept token ids orders each expert's tokens ascending;
//   4. outputs are gathered, and the tokens no expert chose are counted.
// Everything is enqueued on the caller's stream; nothing synchronizes with the host.
#include <cub/device/device_segmented_sort.cuh>

#include <stdexcept>

#include "kernels/routing/cuda_utils.cuh"
#include "kernels/routing/routing_cuda.h"
#include "kernels/routing/routing_math.h"

namespace switchyard::kernels {
namespace {

using cuda_detail::blocks_for;
using cuda_detail::kThreads;

template <typename acc_t>
struct ExpertChoiceWorkspace {
  acc_t* scores = nullptr;         // [E*T] expert-major
  acc_t* scores_sorted = nullptr;  // [E*T]
  int32_t* tokens = nullptr;       // [E*T] token id of each score
  int32_t* tokens_sorted = nullptr;
  int64_t* rank_segments = nullptr;    // [E+1] e*T
  int32_t* chosen = nullptr;           // [E*C]
  int32_t* chosen_sorted = nullptr;    // [E*C]
  int64_t* chosen_segments = nullptr;  // [E+1] e*C
  unsigned int* chosen_flag = nullptr; // [T]
  void* sort_temp = nullptr;
  size_t sort_temp_bytes = 0;
  size_t total_bytes = 0;
};

template <typename acc_t>
ExpertChoiceWorkspace<acc_t> carve_workspace(void* base, const ExpertChoiceParams& p) {
  const int64_t T = p.num_tokens, E = p.num_experts, C = p.capacity;
  const int64_t n = E * T, m = E * C;
  cuda_detail::WorkspaceCarver carver(base);
  ExpertChoiceWorkspace<acc_t> w;
  w.scores = carver.take<acc_t>(n);
  w.scores_sorted = carver.take<acc_t>(n);
  w.tokens = carver.take<int32_t>(n);
  w.tokens_sorted = carver.take<int32_t>(n);
  w.rank_segments = carver.take<int64_t>(E + 1);
  w.chosen = carver.take<int32_t>(m);
  w.chosen_sorted = carver.take<int32_t>(m);
  w.chosen_segments = carver.take<int64_t>(E + 1);
  w.chosen_flag = carver.take<unsigned int>(T);
  if (m > 0) {
    size_t rank_bytes = 0, order_bytes = 0;
    SWITCHYARD_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
        nullptr, rank_bytes, static_cast<const acc_t*>(nullptr), static_cast<acc_t*>(nullptr),
        static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), n, E,
        static_cast<const int64_t*>(nullptr), static_cast<const int64_t*>(nullptr)));
    SWITCHYARD_CUDA_CHECK(cub::DeviceSegmentedSort::SortKeys(
        nullptr, order_bytes, static_cast<const int32_t*>(nullptr),
        static_cast<int32_t*>(nullptr), m, E, static_cast<const int64_t*>(nullptr),
        static_cast<const int64_t*>(nullptr)));
    w.sort_temp_bytes = rank_bytes > order_bytes ? rank_bytes : order_bytes;
  }
  w.sort_temp = carver.take_bytes(w.sort_temp_bytes);
  w.total_bytes = carver.bytes();
  return w;
}

template <class Fmt>
__global__ void score_rows_kernel(const typename Fmt::storage_t* __restrict__ logits, int64_t T,
                                  int64_t E, ScoreFunc score_func,
                                  typename Fmt::acc_t* __restrict__ scores,
                                  int32_t* __restrict__ tokens) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  score_row<Fmt>(logits + t * E, E, score_func, scores + t, T);
  for (int64_t e = 0; e < E; ++e) tokens[e * T + t] = static_cast<int32_t>(t);
}

__global__ void segments_kernel(int64_t E, int64_t T, int64_t C,
                                int64_t* __restrict__ rank_segments,
                                int64_t* __restrict__ chosen_segments) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e > E) return;
  rank_segments[e] = e * T;
  chosen_segments[e] = e * C;
}

__global__ void pick_kernel(const int32_t* __restrict__ tokens_sorted, int64_t T, int64_t C,
                            int64_t m, int32_t* __restrict__ chosen) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  chosen[i] = tokens_sorted[(i / C) * T + i % C];
}

template <typename acc_t>
__global__ void write_outputs_kernel(const int32_t* __restrict__ chosen_sorted,
                                     const acc_t* __restrict__ scores, int64_t T, int64_t C,
                                     int64_t m, int64_t* __restrict__ token_index,
                                     int64_t* __restrict__ expert_index,
                                     acc_t* __restrict__ weights,
                                     unsigned int* __restrict__ chosen_flag) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  const int64_t t = chosen_sorted[i];
  const int64_t e = i / C;
  token_index[i] = t;
  expert_index[i] = e;
  weights[i] = scores[e * T + t];
  atomicExch(chosen_flag + t, 1u);
}

// One block: expert_counts = C, num_unrouted = tokens whose flag is 0.
__global__ void write_counts_kernel(const unsigned int* __restrict__ chosen_flag, int64_t T,
                                    int64_t E, int64_t C, int64_t* __restrict__ expert_counts,
                                    int64_t* __restrict__ num_unrouted) {
  __shared__ unsigned long long block_unrouted;
  if (threadIdx.x == 0) block_unrouted = 0;
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) expert_counts[e] = C;
  unsigned long long local = 0;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) local += chosen_flag[t] == 0u;
  atomicAdd(&block_unrouted, local);
  __syncthreads();
  if (threadIdx.x == 0) *num_unrouted = static_cast<int64_t>(block_unrouted);
}

template <class Fmt>
void expert_choice_cuda_impl(const typename Fmt::storage_t* logits, const ExpertChoiceParams& p,
                             const ExpertChoiceOutputs& out, void* workspace,
                             size_t workspace_bytes, cudaStream_t stream) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, C = p.capacity;
  const int64_t n = E * T, m = E * C;
  ExpertChoiceWorkspace<acc_t> w = carve_workspace<acc_t>(workspace, p);
  if (workspace_bytes < w.total_bytes) {
    throw std::invalid_argument("expert_choice_cuda: workspace of " +
                                std::to_string(workspace_bytes) + " bytes, needs " +
                                std::to_string(w.total_bytes));
  }
  if (T > 0) {
    SWITCHYARD_CUDA_CHECK(cudaMemsetAsync(w.chosen_flag, 0, T * sizeof(unsigned int), stream));
  }
  if (m > 0) {
    // 1. scores, expert-major
    score_rows_kernel<Fmt><<<blocks_for(T), kThreads, 0, stream>>>(logits, T, E, p.score_func,
                                                                   w.scores, w.tokens);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
    segments_kernel<<<blocks_for(E + 1), kThreads, 0, stream>>>(E, T, C, w.rank_segments,
                                                                w.chosen_segments);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
    // 2. rank every expert's tokens, keep the first C
    size_t temp_bytes = w.sort_temp_bytes;
    SWITCHYARD_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairsDescending(
        w.sort_temp, temp_bytes, w.scores, w.scores_sorted, w.tokens, w.tokens_sorted, n, E,
        w.rank_segments, w.rank_segments + 1, stream));
    pick_kernel<<<blocks_for(m), kThreads, 0, stream>>>(w.tokens_sorted, T, C, m, w.chosen);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
    // 3. ascending tokens within each expert
    temp_bytes = w.sort_temp_bytes;
    SWITCHYARD_CUDA_CHECK(cub::DeviceSegmentedSort::SortKeys(
        w.sort_temp, temp_bytes, w.chosen, w.chosen_sorted, m, E, w.chosen_segments,
        w.chosen_segments + 1, stream));
    // 4. outputs
    write_outputs_kernel<acc_t><<<blocks_for(m), kThreads, 0, stream>>>(
        w.chosen_sorted, w.scores, T, C, m, out.token_index, out.expert_index,
        static_cast<acc_t*>(out.weights), w.chosen_flag);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
  }
  write_counts_kernel<<<1, 256, 0, stream>>>(w.chosen_flag, T, E, C, out.expert_counts,
                                             out.num_unrouted);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
}

// ---- backward --------------------------------------------------------------------------------

template <typename acc_t>
__global__ void scatter_grad_kernel(const acc_t* __restrict__ grad_weights,
                                    const int64_t* __restrict__ token_index,
                                    const int64_t* __restrict__ expert_index, int64_t E,
                                    int64_t m, acc_t* __restrict__ grad_logits) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m) return;
  grad_logits[token_index[i] * E + expert_index[i]] = grad_weights[i];
}

template <class Fmt>
__global__ void score_backward_rows_kernel(const typename Fmt::storage_t* __restrict__ logits,
                                           int64_t T, int64_t E, ScoreFunc score_func,
                                           typename Fmt::acc_t* __restrict__ grad_logits) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= T) return;
  score_backward_row<Fmt>(logits + t * E, E, score_func, grad_logits + t * E);
}

template <class Fmt>
void expert_choice_backward_cuda_impl(const typename Fmt::storage_t* logits,
                                      const typename Fmt::acc_t* grad_weights,
                                      const int64_t* token_index, const int64_t* expert_index,
                                      const ExpertChoiceParams& p,
                                      typename Fmt::acc_t* grad_logits, cudaStream_t stream) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, m = E * p.capacity;
  if (T == 0) return;
  SWITCHYARD_CUDA_CHECK(cudaMemsetAsync(grad_logits, 0, T * E * sizeof(acc_t), stream));
  if (m > 0) {
    scatter_grad_kernel<acc_t><<<blocks_for(m), kThreads, 0, stream>>>(
        grad_weights, token_index, expert_index, E, m, grad_logits);
    SWITCHYARD_CUDA_CHECK_LAUNCH();
  }
  score_backward_rows_kernel<Fmt><<<blocks_for(T), kThreads, 0, stream>>>(logits, T, E,
                                                                          p.score_func,
                                                                          grad_logits);
  SWITCHYARD_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t expert_choice_cuda_workspace_bytes(LogitsType type, const ExpertChoiceParams& p) {
  return type == LogitsType::kFloat64 ? carve_workspace<double>(nullptr, p).total_bytes
                                      : carve_workspace<float>(nullptr, p).total_bytes;
}

void expert_choice_cuda(const void* logits, LogitsType type, const ExpertChoiceParams& p,
                        const ExpertChoiceOutputs& out, void* workspace, size_t workspace_bytes,
                        cudaStream_t stream) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    expert_choice_cuda_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits), p, out,
                                 workspace, workspace_bytes, stream);
  });
}

void expert_choice_backward_cuda(const void* logits, LogitsType type, const void* grad_weights,
                                 const int64_t* token_index, const int64_t* expert_index,
                                 const ExpertChoiceParams& p, void* grad_logits,
                                 cudaStream_t stream) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    using acc_t = typename Fmt::acc_t;
    expert_choice_backward_cuda_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits),
                                          static_cast<const acc_t*>(grad_weights), token_index,
                                          expert_index, p, static_cast<acc_t*>(grad_logits),
                                          stream);
  });
}

}  // namespace switchyard::kernels
