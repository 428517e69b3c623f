// Token permutation on the CPU.
//
//   permute_tokens: one row copy per slot (OpenMP over slots).
//   unpermute_tokens:
//     1. a stable counting sort of the valid slots by token (sequential, O(S), a small
//        fraction of the O(S*d) row traffic; it also checks the token ids): offsets [T+1]
//        and slots [valid], each token's slots in ascending slot order;
//     2. OpenMP over tokens: each token sums its rows in that order (row_format.h), so the
//        result does not depend on the thread count.
//   unpermute_tokens_backward: OpenMP over slots; one fused pass over a slot's row writes
//     grad_rows and accumulates the dot product for grad_weights.
// The inner loops run over the d elements of a row with no dependence between elements,
// so they vectorize; the dot product keeps kLanes partial sums, combined in a fixed order.
//
// Note [CPU vector paths]
// The library is built for baseline x86-64 (SSE2), where the bfloat16/float16 conversions
// of the row loops are slow enough to dominate (no 32 -> 16 bit packing, 4-wide integer
// ops). So the per-row routines are compiled twice, as they are and for AVX2, and the AVX2
// copy is chosen at run time where the CPU has it (2-3x faster 16-bit loops in
// scripts/bench/bench_permute.py). "avx2" does not include FMA: products and sums stay
// separately rounded, so both copies return the same bits (Note [One rounding for CPU and
// GPU]). AVX-512 measured no faster: the loops are then memory bound.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/permute/permute_cpu.h"
#include "kernels/permute/row_format.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SWITCHYARD_PERMUTE_AVX2 1
#define SWITCHYARD_TARGET_AVX2 __attribute__((target("avx2"), noinline))
#else
#define SWITCHYARD_PERMUTE_AVX2 0
#endif

namespace switchyard::kernels {
namespace {

// Below this much row data per thread, waking another thread costs more than it saves.
constexpr int64_t kMinBytesPerThread = 64 * 1024;
constexpr int64_t kNoBadSlot = std::numeric_limits<int64_t>::max();
// Partial sums of the grad_weights dot product: four AVX2 registers of floats, enough
// independent additions to hide their latency.
constexpr int kLanes = 32;

int threads_for(int64_t bytes, int requested) {
  const int64_t useful = std::max<int64_t>(1, bytes / kMinBytesPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(requested, useful)));
}

inline bool token_in_range(int64_t t, int64_t num_tokens) {
  return static_cast<uint64_t>(t) < static_cast<uint64_t>(num_tokens);
}

inline int64_t as_result(int64_t bad) { return bad == kNoBadSlot ? -1 : bad; }

// The lowest valid slot whose token id is out of range, or kNoBadSlot.
int64_t find_bad_slot(const int64_t* token_index, const int64_t* expert_index,
                      const PermuteParams& p) {
  for (int64_t i = 0; i < p.num_slots; ++i) {
    if (expert_index[i] >= 0 && !token_in_range(token_index[i], p.num_tokens)) return i;
  }
  return kNoBadSlot;
}

// ---- permute_tokens ---------------------------------------------------------------------

int64_t permute_impl(const char* x, const int64_t* token_index, const int64_t* expert_index,
                     const PermuteParams& p, char* rows) {
  const int64_t S = p.num_slots, T = p.num_tokens;
  const int64_t row_bytes = p.hidden * row_type_bytes(p.type);
  if (row_bytes == 0) return as_result(find_bad_slot(token_index, expert_index, p));
  int64_t bad = kNoBadSlot;
  const int nt = threads_for(S * row_bytes, p.num_threads);
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : bad)
  for (int64_t i = 0; i < S; ++i) {
    char* dst = rows + i * row_bytes;
    const bool valid = expert_index[i] >= 0;
    const int64_t t = valid ? token_index[i] : -1;
    if (valid && token_in_range(t, T)) {
      std::memcpy(dst, x + t * row_bytes, static_cast<size_t>(row_bytes));
    } else {
      if (valid) bad = std::min(bad, i);
      std::memset(dst, 0, static_cast<size_t>(row_bytes));
    }
  }
  return as_result(bad);
}

// ---- unpermute_tokens -------------------------------------------------------------------

// The valid slots grouped by token: token t's slots are slots[offsets[t] .. offsets[t+1]),
// ascending.
struct TokenSlots {
  std::vector<int64_t> offsets;
  std::vector<int64_t> slots;
};

// Stable counting sort of the valid slots by token id. Returns the lowest valid slot with
// an out-of-range token id (before anything is grouped), or kNoBadSlot.
int64_t group_slots_by_token(const int64_t* token_index, const int64_t* expert_index,
                             const PermuteParams& p, TokenSlots& g) {
  const int64_t S = p.num_slots, T = p.num_tokens;
  g.offsets.assign(static_cast<size_t>(T) + 1, 0);
  for (int64_t i = 0; i < S; ++i) {
    if (expert_index[i] < 0) continue;
    const int64_t t = token_index[i];
    if (!token_in_range(t, T)) return i;
    ++g.offsets[t + 1];
  }
  for (int64_t t = 0; t < T; ++t) g.offsets[t + 1] += g.offsets[t];
  g.slots.resize(static_cast<size_t>(g.offsets[T]));
  std::vector<int64_t> cursor(g.offsets.begin(), g.offsets.end() - 1);
  for (int64_t i = 0; i < S; ++i) {
    if (expert_index[i] >= 0) g.slots[cursor[token_index[i]]++] = i;
  }
  return kNoBadSlot;
}

// Token t's output row from its n slots: out = round(sum of w[i] * rows[i]), ascending i,
// from +0 (a lone -0 contribution sums to +0, as with index_add_ into zeros). float and
// double rows accumulate in out itself, 16-bit rows in the float row `scratch`. The first
// slot's pass also does the zeroing (0 + w*r) and the last one the rounding to storage, so
// a token of k slots costs k passes over d, not k + 2.
template <class Fmt>
SWITCHYARD_FORCE_INLINE void sum_token_rows(const typename Fmt::storage_t* __restrict__ rows,
                                            const typename Fmt::acc_t* __restrict__ weights,
                                            const int64_t* __restrict__ slots, int64_t n,
                                            int64_t d, typename Fmt::acc_t* __restrict__ scratch,
                                            typename Fmt::storage_t* __restrict__ out) {
  using acc_t = typename Fmt::acc_t;
  using storage_t = typename Fmt::storage_t;
  const auto weight = [&](int64_t k) { return weights != nullptr ? weights[slots[k]] : acc_t(1); };
  const auto row = [&](int64_t k) { return rows + slots[k] * d; };
  if (n == 0) {
    for (int64_t j = 0; j < d; ++j) out[j] = Fmt::store(acc_t(0));
    return;
  }
  if constexpr (std::is_same_v<acc_t, storage_t>) {
    for (int64_t k = 0; k < n; ++k) {
      const acc_t w = weight(k);
      const storage_t* __restrict__ r = row(k);
      if (k == 0) {
        for (int64_t j = 0; j < d; ++j) out[j] = mul_add_rn(acc_t(0), w, Fmt::load(r[j]));
      } else {
        for (int64_t j = 0; j < d; ++j) out[j] = mul_add_rn(out[j], w, Fmt::load(r[j]));
      }
    }
  } else {
    acc_t* __restrict__ acc = scratch;
    const acc_t w0 = weight(0);
    const storage_t* __restrict__ r0 = row(0);
    if (n == 1) {
      for (int64_t j = 0; j < d; ++j) out[j] = Fmt::store(mul_add_rn(acc_t(0), w0, Fmt::load(r0[j])));
      return;
    }
    for (int64_t j = 0; j < d; ++j) acc[j] = mul_add_rn(acc_t(0), w0, Fmt::load(r0[j]));
    for (int64_t k = 1; k + 1 < n; ++k) {
      const acc_t w = weight(k);
      const storage_t* __restrict__ r = row(k);
      for (int64_t j = 0; j < d; ++j) acc[j] = mul_add_rn(acc[j], w, Fmt::load(r[j]));
    }
    const acc_t wl = weight(n - 1);
    const storage_t* __restrict__ rl = row(n - 1);
    for (int64_t j = 0; j < d; ++j) out[j] = Fmt::store(mul_add_rn(acc[j], wl, Fmt::load(rl[j])));
  }
}

// The two compiled copies (Note [CPU vector paths]).
template <class Fmt>
void sum_token_rows_generic(const typename Fmt::storage_t* rows,
                            const typename Fmt::acc_t* weights, const int64_t* slots, int64_t n,
                            int64_t d, typename Fmt::acc_t* scratch,
                            typename Fmt::storage_t* out) {
  sum_token_rows<Fmt>(rows, weights, slots, n, d, scratch, out);
}
#if SWITCHYARD_PERMUTE_AVX2
template <class Fmt>
SWITCHYARD_TARGET_AVX2 void sum_token_rows_avx2(const typename Fmt::storage_t* rows,
                                                const typename Fmt::acc_t* weights,
                                                const int64_t* slots, int64_t n, int64_t d,
                                                typename Fmt::acc_t* scratch,
                                                typename Fmt::storage_t* out) {
  sum_token_rows<Fmt>(rows, weights, slots, n, d, scratch, out);
}
#endif

bool cpu_has_avx2() {
#if SWITCHYARD_PERMUTE_AVX2
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

template <class Fmt>
void unpermute_impl(const typename Fmt::storage_t* rows, const typename Fmt::acc_t* weights,
                    const TokenSlots& g, const PermuteParams& p, typename Fmt::storage_t* y) {
  using acc_t = typename Fmt::acc_t;
  using storage_t = typename Fmt::storage_t;
  auto* sum_token = &sum_token_rows_generic<Fmt>;
#if SWITCHYARD_PERMUTE_AVX2
  if (p.allow_avx2 && cpu_has_avx2()) sum_token = &sum_token_rows_avx2<Fmt>;
#endif
  const int64_t T = p.num_tokens, d = p.hidden;
  const int64_t bytes = (static_cast<int64_t>(g.slots.size()) + T) * d *
                        static_cast<int64_t>(sizeof(storage_t));
  const int nt = threads_for(bytes, p.num_threads);
#pragma omp parallel num_threads(nt)
  {
    std::vector<acc_t> scratch(std::is_same_v<acc_t, storage_t> ? 0 : static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t begin = g.offsets[t];
      sum_token(rows, weights, g.slots.data() + begin, g.offsets[t + 1] - begin, d,
                scratch.data(), y + t * d);
    }
  }
}

// ---- unpermute_tokens_backward ----------------------------------------------------------

// grad_row[j] = w * g[j]; returns <row, g> when kWeights (summed in kLanes partial sums
// combined pairwise: a fixed order, whatever the thread count).
template <class Fmt, bool kRows, bool kWeights>
SWITCHYARD_FORCE_INLINE typename Fmt::acc_t backward_row(
    const typename Fmt::storage_t* __restrict__ g,
                                        const typename Fmt::storage_t* __restrict__ row,
                                        typename Fmt::acc_t w,
                                        typename Fmt::storage_t* __restrict__ grad_row,
                                        int64_t d) {
  using acc_t = typename Fmt::acc_t;
  acc_t part[kLanes] = {};
  const int64_t body = d - d % kLanes;
  for (int64_t j = 0; j < body; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t gv = Fmt::load(g[j + l]);
      if constexpr (kRows) grad_row[j + l] = Fmt::store(mul_rn(w, gv));
      if constexpr (kWeights) part[l] = mul_add_rn(part[l], Fmt::load(row[j + l]), gv);
    }
  }
  for (int64_t j = body; j < d; ++j) {
    const acc_t gv = Fmt::load(g[j]);
    if constexpr (kRows) grad_row[j] = Fmt::store(mul_rn(w, gv));
    if constexpr (kWeights) part[j - body] = mul_add_rn(part[j - body], Fmt::load(row[j]), gv);
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) part[l] += part[l + width];
  }
  return part[0];
}

template <class Fmt, bool kRows, bool kWeights>
typename Fmt::acc_t backward_row_generic(const typename Fmt::storage_t* g,
                                         const typename Fmt::storage_t* row,
                                         typename Fmt::acc_t w,
                                         typename Fmt::storage_t* grad_row, int64_t d) {
  return backward_row<Fmt, kRows, kWeights>(g, row, w, grad_row, d);
}
#if SWITCHYARD_PERMUTE_AVX2
template <class Fmt, bool kRows, bool kWeights>
SWITCHYARD_TARGET_AVX2 typename Fmt::acc_t backward_row_avx2(const typename Fmt::storage_t* g,
                                                             const typename Fmt::storage_t* row,
                                                             typename Fmt::acc_t w,
                                                             typename Fmt::storage_t* grad_row,
                                                             int64_t d) {
  return backward_row<Fmt, kRows, kWeights>(g, row, w, grad_row, d);
}
#endif

template <class Fmt, bool kRows, bool kWeights>
int64_t backward_impl(const typename Fmt::storage_t* grad_y,
                      const typename Fmt::storage_t* rows, const int64_t* token_index,
                      const int64_t* expert_index, const typename Fmt::acc_t* weights,
                      const PermuteParams& p, typename Fmt::storage_t* grad_rows,
                      typename Fmt::acc_t* grad_weights) {
  using acc_t = typename Fmt::acc_t;
  using storage_t = typename Fmt::storage_t;
  auto* row_fn = &backward_row_generic<Fmt, kRows, kWeights>;
#if SWITCHYARD_PERMUTE_AVX2
  if (p.allow_avx2 && cpu_has_avx2()) row_fn = &backward_row_avx2<Fmt, kRows, kWeights>;
#endif
  const int64_t S = p.num_slots, T = p.num_tokens, d = p.hidden;
  const int64_t bytes = S * d * static_cast<int64_t>(sizeof(storage_t)) * (kRows + kWeights + 1);
  const int nt = threads_for(bytes, p.num_threads);
  int64_t bad = kNoBadSlot;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : bad)
  for (int64_t i = 0; i < S; ++i) {
    const bool valid = expert_index[i] >= 0;
    const int64_t t = valid ? token_index[i] : -1;
    if (!valid || !token_in_range(t, T)) {
      if (valid) bad = std::min(bad, i);
      if constexpr (kRows) std::fill(grad_rows + i * d, grad_rows + (i + 1) * d, storage_t(0));
      if constexpr (kWeights) grad_weights[i] = acc_t(0);
      continue;
    }
    const acc_t w = weights != nullptr ? weights[i] : acc_t(1);
    const acc_t dot = row_fn(grad_y + t * d, kWeights ? rows + i * d : nullptr, w,
                             kRows ? grad_rows + i * d : nullptr, d);
    if constexpr (kWeights) grad_weights[i] = dot;
  }
  return as_result(bad);
}

}  // namespace

int64_t permute_tokens_cpu(const void* x, const int64_t* token_index,
                           const int64_t* expert_index, const PermuteParams& p, void* rows) {
  return permute_impl(static_cast<const char*>(x), token_index, expert_index, p,
                      static_cast<char*>(rows));
}

int64_t unpermute_tokens_cpu(const void* rows, const int64_t* token_index,
                             const int64_t* expert_index, const void* weights,
                             const PermuteParams& p, void* y) {
  TokenSlots g;
  const int64_t bad = group_slots_by_token(token_index, expert_index, p, g);
  if (bad != kNoBadSlot) return bad;
  dispatch_row_type(p.type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    unpermute_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(rows),
                        static_cast<const typename Fmt::acc_t*>(weights), g, p,
                        static_cast<typename Fmt::storage_t*>(y));
  });
  return -1;
}

int64_t unpermute_tokens_backward_cpu(const void* grad_y, const void* rows,
                                      const int64_t* token_index, const int64_t* expert_index,
                                      const void* weights, const PermuteParams& p,
                                      void* grad_rows, void* grad_weights) {
  int64_t bad = -1;
  dispatch_row_type(p.type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    using storage_t = typename Fmt::storage_t;
    using acc_t = typename Fmt::acc_t;
    const auto* gy = static_cast<const storage_t*>(grad_y);
    const auto* r = static_cast<const storage_t*>(rows);
    const auto* w = static_cast<const acc_t*>(weights);
    auto* gr = static_cast<storage_t*>(grad_rows);
    auto* gw = static_cast<acc_t*>(grad_weights);
    if (gr != nullptr && gw != nullptr) {
      bad = backward_impl<Fmt, true, true>(gy, r, token_index, expert_index, w, p, gr, gw);
    } else if (gr != nullptr) {
      bad = backward_impl<Fmt, true, false>(gy, r, token_index, expert_index, w, p, gr, gw);
    } else if (gw != nullptr) {
      bad = backward_impl<Fmt, false, true>(gy, r, token_index, expert_index, w, p, gr, gw);
    } else {
      bad = as_result(find_bad_slot(token_index, expert_index, p));
    }
  });
  return bad;
}

}  // namespace switchyard::kernels
