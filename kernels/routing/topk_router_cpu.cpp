// route_topk on the CPU: one OpenMP region, rows split in contiguous chunks per thread.
//
//   1. each thread routes its rows (routing_math.h: score, select, weigh) and counts its
//      selections per expert in its own histogram;
//   2. one thread turns the histograms into per-expert totals and per-thread write cursors;
//   3. each thread scatters its slots at its cursors: a counting sort that is stable in
//      token order, so slots come out grouped by (expert, token) with no comparison sort.
// With a capacity, step 3 first groups the slot ids (uncapped), then each expert picks
// the slots it keeps, and the dropped and local slots are written to the tail in slot order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/routing/routing_cpu.h"
#include "kernels/routing/routing_math.h"

namespace switchyard::kernels {
namespace {

// Fewer rows than this per thread are not worth a thread.
constexpr int64_t kMinRowsPerThread = 256;

int threads_for(int64_t rows, int requested) {
  const int64_t useful = std::max<int64_t>(1, rows / kMinRowsPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(requested, useful)));
}

// Strict total order "a is kept before b" for the score drop policy: higher weight first
// (NaN lowest), then lower slot (= lower token within an expert).
template <typename acc_t>
struct HigherWeightFirst {
  const acc_t* w;
  bool operator()(int64_t a, int64_t b) const {
    const acc_t wa = std::isnan(w[a]) ? -INFINITY : w[a];
    const acc_t wb = std::isnan(w[b]) ? -INFINITY : w[b];
    return wa > wb || (wa == wb && a < b);
  }
};

template <class Fmt>
void topk_router_impl(const typename Fmt::storage_t* logits, const typename Fmt::acc_t* bias,
                      const TopkRouterParams& p, const TopkRouterOutputs& out) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, K = p.k;
  const int64_t Er = p.num_routed_experts, S = T * K;
  const int64_t C = p.capacity;
  const bool capped = C >= 0;
  auto* topk_w = static_cast<acc_t*>(out.topk_weights);
  auto* slot_w = static_cast<acc_t*>(out.slot_weights);
  int64_t* topk_e = out.topk_experts;

  const TopkRowConfig cfg = make_topk_row_config(p);
  const int64_t scratch_size = topk_row_scratch_size(cfg);
  const int max_threads = threads_for(T, p.num_threads);

  // hist[tid][e]: selections of expert e by thread tid's rows, later its write cursor.
  // Rows padded to whole cache lines plus one, so threads never share a line.
  const int64_t hist_stride = (E + 7) / 8 * 8 + 8;
  std::vector<int64_t> hist(static_cast<size_t>(max_threads) * hist_stride, 0);
  std::vector<int64_t> tail_cursor(max_threads, 0);
  // Note [Dense scatter]
  // When most rows pick most experts (2K > E; K == E at the extreme) every expert's block
  // has about T slots, so with T a multiple of 512 the E blocks of each output array start
  // at the same offset modulo 4 KiB: the 4E write streams of the scatter fall into one L1
  // set and thrash it (a 2-3x slowdown). Then the scatter writes slot ids only (E streams)
  // and each thread fills its runs of the other arrays sequentially.
  const bool dense = 2 * K > E;
  std::vector<int64_t> run_begin(dense ? static_cast<size_t>(max_threads) * hist_stride : 0);
  std::vector<acc_t> scratch(static_cast<size_t>(max_threads) * scratch_size);
  // capacity only
  std::vector<int64_t> segment_begin, kept_begin, grouped, ranked;
  std::vector<uint8_t> dropped;
  if (capped) {
    segment_begin.resize(Er);
    kept_begin.resize(Er);
    grouped.resize(S);
    dropped.assign(S, 0);
    if (p.drop_policy == DropPolicy::kScore) ranked.resize(S);
  }
  int64_t kept_total = 0;

#pragma omp parallel num_threads(max_threads)
  {
    const int nt = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    const int64_t r0 = T * tid / nt, r1 = T * (tid + 1) / nt;
    int64_t* h = hist.data() + static_cast<int64_t>(tid) * hist_stride;
    acc_t* row_scratch = scratch.data() + static_cast<int64_t>(tid) * scratch_size;

    // 1. route the rows
    for (int64_t t = r0; t < r1; ++t) {
      topk_route_row<Fmt>(logits + t * E, bias, cfg, topk_w + t * K, topk_e + t * K,
                          row_scratch);
      for (int64_t j = 0; j < K; ++j) ++h[topk_e[t * K + j]];
    }
#pragma omp barrier

    // 2. totals per expert, write cursors per thread
#pragma omp single
    {
      for (int64_t e = 0; e < E; ++e) {
        int64_t total = 0;
        for (int th = 0; th < nt; ++th) total += hist[th * hist_stride + e];
        out.expert_load[e] = total;
      }
      int64_t cursor = 0;  // routed slots, grouped by expert, uncapped
      for (int64_t e = 0; e < Er; ++e) {
        if (capped) segment_begin[e] = cursor;
        for (int th = 0; th < nt; ++th) {
          const int64_t c = hist[th * hist_stride + e];
          hist[th * hist_stride + e] = cursor;
          cursor += c;
        }
      }
      if (!capped) {
        for (int64_t e = 0; e < Er; ++e) out.expert_counts[e] = out.expert_load[e];
        *out.num_dropped = 0;
        for (int th = 0; th < nt; ++th) {  // local experts' slots, in slot order
          tail_cursor[th] = cursor;
          for (int64_t e = Er; e < E; ++e) cursor += hist[th * hist_stride + e];
        }
      } else {
        int64_t kept = 0, num_dropped = 0;
        for (int64_t e = 0; e < Er; ++e) {
          const int64_t count = std::min(out.expert_load[e], C);
          kept_begin[e] = kept;
          out.expert_counts[e] = count;
          kept += count;
          num_dropped += out.expert_load[e] - count;
        }
        kept_total = kept;
        *out.num_dropped = num_dropped;
      }
    }  // implicit barrier

    if (!capped && !dense) {
      // 3. scatter
      int64_t tail = tail_cursor[tid];
      for (int64_t t = r0; t < r1; ++t) {
        for (int64_t j = 0; j < K; ++j) {
          const int64_t slot = t * K + j;
          const int64_t e = topk_e[slot];
          const bool routed = e < Er;
          const int64_t pos = routed ? h[e]++ : tail++;
          out.token_index[pos] = t;
          out.expert_index[pos] = routed ? e : -1;
          out.slot_index[pos] = slot;
          slot_w[pos] = routed ? topk_w[slot] : acc_t(0);
        }
      }
    } else if (!capped) {
      // 3. dense routing (see Note [Dense scatter]): slot ids first, then each thread fills
      //    its own runs of every expert's block sequentially
      int64_t* begin = run_begin.data() + static_cast<int64_t>(tid) * hist_stride;
      std::copy(h, h + Er, begin);
      int64_t tail = tail_cursor[tid];
      for (int64_t t = r0; t < r1; ++t) {
        for (int64_t j = 0; j < K; ++j) {
          const int64_t slot = t * K + j;
          const int64_t e = topk_e[slot];
          if (e < Er) {
            out.slot_index[h[e]++] = slot;
          } else {
            out.token_index[tail] = t;
            out.expert_index[tail] = -1;
            out.slot_index[tail] = slot;
            slot_w[tail] = acc_t(0);
            ++tail;
          }
        }
      }
      for (int64_t e = 0; e < Er; ++e) {
        for (int64_t pos = begin[e]; pos < h[e]; ++pos) {
          const int64_t slot = out.slot_index[pos];
          out.token_index[pos] = slot / K;
          out.expert_index[pos] = e;
          slot_w[pos] = topk_w[slot];
        }
      }
    } else {
      // 3a. routed slot ids grouped by expert, in token order, before the capacity limit
      for (int64_t t = r0; t < r1; ++t) {
        for (int64_t j = 0; j < K; ++j) {
          const int64_t slot = t * K + j;
          const int64_t e = topk_e[slot];
          if (e < Er) grouped[h[e]++] = slot;
        }
      }
#pragma omp barrier
      // 3b. each expert keeps C slots: its first (position) or its heaviest (score)
#pragma omp for schedule(dynamic, 1)
      for (int64_t e = 0; e < Er; ++e) {
        const int64_t begin = segment_begin[e], n = out.expert_load[e];
        const int64_t* segment = grouped.data() + begin;
        if (n > C) {
          if (p.drop_policy == DropPolicy::kPosition) {
            for (int64_t i = C; i < n; ++i) dropped[segment[i]] = 1;
          } else {
            int64_t* order = ranked.data() + begin;
            std::copy(segment, segment + n, order);
            std::nth_element(order, order + C, order + n, HigherWeightFirst<acc_t>{topk_w});
            for (int64_t i = C; i < n; ++i) dropped[order[i]] = 1;
          }
        }
        int64_t pos = kept_begin[e];
        for (int64_t i = 0; i < n; ++i) {
          const int64_t slot = segment[i];
          if (dropped[slot]) continue;
          out.token_index[pos] = slot / K;
          out.expert_index[pos] = e;
          out.slot_index[pos] = slot;
          slot_w[pos] = topk_w[slot];
          ++pos;
        }
      }  // implicit barrier
      // 3c. the tail: dropped and local slots in slot order; dropped weights become 0
      int64_t count = 0;
      for (int64_t slot = r0 * K; slot < r1 * K; ++slot) {
        count += topk_e[slot] >= Er || dropped[slot];
      }
      tail_cursor[tid] = count;
#pragma omp barrier
#pragma omp single
      {
        int64_t cursor = kept_total;
        for (int th = 0; th < nt; ++th) {
          const int64_t c = tail_cursor[th];
          tail_cursor[th] = cursor;
          cursor += c;
        }
      }  // implicit barrier
      int64_t pos = tail_cursor[tid];
      for (int64_t slot = r0 * K; slot < r1 * K; ++slot) {
        const bool is_dropped = dropped[slot] != 0;
        if (topk_e[slot] < Er && !is_dropped) continue;
        out.token_index[pos] = slot / K;
        out.expert_index[pos] = -1;
        out.slot_index[pos] = slot;
        slot_w[pos] = acc_t(0);
        ++pos;
        if (is_dropped) topk_w[slot] = acc_t(0);
      }
    }
  }
}

template <class Fmt>
void topk_router_backward_impl(const typename Fmt::storage_t* logits,
                               const TopkBackwardInputs& in, const TopkBackwardParams& p,
                               typename Fmt::acc_t* grad_logits) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, K = p.k, Er = p.num_routed_experts;
  const int64_t S = T * K;
  const auto* grad_topk = static_cast<const acc_t*>(in.grad_topk_weights);
  const auto* grad_slot = static_cast<const acc_t*>(in.grad_slot_weights);
  const int64_t* topk_e = in.topk_experts;

  // 1. dL/dw per slot: the [T,K] gradient plus, for kept routed slots, the grouped one.
  //    A dropped slot's weight is the constant 0: no gradient.
  int64_t kept = 0;
  for (int64_t e = 0; e < Er; ++e) kept += in.expert_counts[e];
  kept = std::min(kept, S);
  std::vector<acc_t> grad(S);
  const int nt = threads_for(T, p.num_threads);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t s = 0; s < S; ++s) grad[s] = topk_e[s] >= Er ? grad_topk[s] : acc_t(0);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < kept; ++i) {
      const int64_t s = in.slot_index[i];
      grad[s] = grad_topk[s] + grad_slot[i];
    }
    // 2. per row: through the normalisation and the score function
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      topk_backward_row<Fmt>(logits + t * E, E, K, topk_e + t * K, grad.data() + t * K,
                             p.score_func, p.renormalize, p.scaling_factor,
                             grad_logits + t * E);
    }
  }
}

}  // namespace

void topk_router_cpu(const void* logits, LogitsType type, const void* bias,
                     const TopkRouterParams& p, const TopkRouterOutputs& out) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    using acc_t = typename Fmt::acc_t;
    topk_router_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits),
                          p.has_bias ? static_cast<const acc_t*>(bias) : nullptr, p, out);
  });
}

void topk_router_backward_cpu(const void* logits, LogitsType type, const TopkBackwardInputs& in,
                              const TopkBackwardParams& p, void* grad_logits) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    topk_router_backward_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits), in, p,
                                   static_cast<typename Fmt::acc_t*>(grad_logits));
  });
}

}  // namespace switchyard::kernels
