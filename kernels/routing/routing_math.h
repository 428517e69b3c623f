// Per-row routing arithmetic shared by the CPU and CUDA kernels.
//
// Note [One arithmetic for CPU and GPU]
// Everything that decides which experts a token picks, and with which weight, lives here
// as SWITCHYARD_HOST_DEVICE inline functions that process one logits row. The CPU kernels
// call them from an OpenMP loop over rows, the CUDA kernels from one thread per row; only
// the parallel skeleton (and the grouping sort) differs. So the CPU tests, which run
// everywhere, exercise the arithmetic the GPU runs.
//
// Note [Selection keys]
// Experts are ranked by key = score + selection_bias (DeepSeek-V3's aux-loss-free bias only
// changes which experts win, never their weights). When neither a bias nor top2_sum group
// scores are in play, ranking by score and ranking by logit are the same order (softmax and
// sigmoid are strictly increasing), so the kernels rank by the logit itself: one pass, no
// exp per expert, and no ties created by rounding the scores. Ties go to the lower expert
// index (and to the lower group index when groups are ranked).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/routing/routing_types.h"

#ifndef SWITCHYARD_HOST_DEVICE
#if defined(__CUDACC__)
#define SWITCHYARD_HOST_DEVICE __host__ __device__
#else
#define SWITCHYARD_HOST_DEVICE
#endif
#endif

// For the small per-element functions: inlined even into large loops, so that the loops
// around them vectorize (an out-of-line exp turned the weight loops scalar).
#if defined(__CUDACC__)
#define SWITCHYARD_FORCE_INLINE __forceinline__
#elif defined(__GNUC__)
#define SWITCHYARD_FORCE_INLINE inline __attribute__((always_inline))
#else
#define SWITCHYARD_FORCE_INLINE inline
#endif

// `#pragma omp simd` reductions for the CPU build (OpenMP on), nothing elsewhere. They let
// the compiler vectorize the max / sum-of-exp loops, which it may not reorder on its own.
#define SWITCHYARD_PRAGMA(x) _Pragma(#x)
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define SWITCHYARD_SIMD_REDUCTION(op, var) SWITCHYARD_PRAGMA(omp simd reduction(op : var))
#else
#define SWITCHYARD_SIMD_REDUCTION(op, var)
#endif

namespace switchyard::kernels {

// ---- bits and element formats ------------------------------------------------------------

SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

template <typename T>
SWITCHYARD_HOST_DEVICE inline T negative_infinity() {
  return static_cast<T>(bits_to_float(0xff800000u));
}

// IEEE binary16 -> binary32, exact for every input (subnormals, infinities, NaN).
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// A logits format: how an element is stored and the type the arithmetic runs in.
struct Float32Format {
  using storage_t = float;
  using acc_t = float;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static float load(float v) { return v; }
};
struct Float64Format {
  using storage_t = double;
  using acc_t = double;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static double load(double v) { return v; }
};
struct BFloat16Format {
  using storage_t = uint16_t;
  using acc_t = float;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static float load(uint16_t b) {
    return bits_to_float(static_cast<uint32_t>(b) << 16);
  }
};
struct Float16Format {
  using storage_t = uint16_t;
  using acc_t = float;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE static float load(uint16_t h) {
    return half_bits_to_float(h);
  }
};

// ---- exp, softmax, sigmoid ---------------------------------------------------------------

// exp for float, within 1.3 ulp of the exact result on [-87.3, 88.3]; 0 below -87.34,
// +inf above 88.37, NaN for NaN. Written without branches or floating-point comparisons so
// that the CPU loops vectorize; the GPU runs the same polynomial.
//   exp(x) = 2^n * exp(r), n = round(x / ln2), r = x - n*ln2 in [-ln2/2, ln2/2],
//   exp(r) by its degree-7 Taylor polynomial (truncation error < 6e-9 relative).
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE float exp_acc(float x) {
  const uint32_t xb = float_to_bits(x);
  const int32_t abs_bits = static_cast<int32_t>(xb & 0x7fffffffu);
  const int32_t negative = static_cast<int32_t>(xb >> 31);
  const int32_t not_nan = abs_bits <= 0x7f800000;
  const int32_t beyond_low = abs_bits > 0x42AEAC50;   // |x| > 87.33655: 2^n below 2^-126
  const int32_t beyond_high = abs_bits > 0x42B0C0A5;  // |x| > 88.37626: 2^n above 2^127
  const uint32_t underflow = 0u - static_cast<uint32_t>(negative & beyond_low & not_nan);
  const uint32_t overflow = 0u - static_cast<uint32_t>((negative ^ 1) & beyond_high & not_nan);

  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const uint32_t scale_bits = (float_to_bits(shifted) - float_to_bits(kRound) + 127u) << 23;
  float r = x - n * 0.693145751953125f;   // ln2, high part (exact product for |n| < 2^9)
  r = r - n * 1.428606820309417232e-06f;  // ln2, low part
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  uint32_t y = float_to_bits(p * bits_to_float(scale_bits)) & ~underflow;
  y = (y & ~overflow) | (overflow & 0x7f800000u);
  return bits_to_float(y);
}

SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE double exp_acc(double x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

template <typename acc_t>
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE acc_t sigmoid_acc(acc_t x) {
  return acc_t(1) / (acc_t(1) + exp_acc(-x));
}

// softmax probability of a logit given the row's max m and s = sum_j exp(x_j - m).
template <typename acc_t>
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE acc_t softmax_prob(acc_t x, acc_t m, acc_t s) {
  return exp_acc(x - m) / s;
}

template <class Fmt>
SWITCHYARD_HOST_DEVICE inline typename Fmt::acc_t row_max(const typename Fmt::storage_t* x,
                                                           int64_t n) {
  using acc_t = typename Fmt::acc_t;
  acc_t m = Fmt::load(x[0]);
  SWITCHYARD_SIMD_REDUCTION(max, m)
  for (int64_t j = 1; j < n; ++j) {
    const acc_t v = Fmt::load(x[j]);
    m = v > m ? v : m;
  }
  return m;
}

template <class Fmt>
SWITCHYARD_HOST_DEVICE inline typename Fmt::acc_t row_sum_exp(const typename Fmt::storage_t* x,
                                                              int64_t n,
                                                              typename Fmt::acc_t m) {
  using acc_t = typename Fmt::acc_t;
  acc_t s = 0;
  SWITCHYARD_SIMD_REDUCTION(+, s)
  for (int64_t j = 0; j < n; ++j) s += exp_acc(Fmt::load(x[j]) - m);
  return s;
}

// ---- ranking -------------------------------------------------------------------------------

// Key of expert j: the logit itself (see Note [Selection keys]).
template <class Fmt>
struct LogitKey {
  using acc_t = typename Fmt::acc_t;
  const typename Fmt::storage_t* x;
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE acc_t operator()(int64_t j) const {
    return Fmt::load(x[j]);
  }
};

// Key of expert j: score + bias (bias may be null).
template <class Fmt>
struct ScoreKey {
  using acc_t = typename Fmt::acc_t;
  const typename Fmt::storage_t* x;
  const acc_t* bias;
  ScoreFunc score_func;
  acc_t max;      // softmax: the row max
  acc_t sum_exp;  // softmax: sum_j exp(x_j - max)
  SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE acc_t operator()(int64_t j) const {
    const acc_t v = Fmt::load(x[j]);
    const acc_t score =
        score_func == ScoreFunc::kSoftmax ? softmax_prob(v, max, sum_exp) : sigmoid_acc(v);
    return bias != nullptr ? score + bias[j] : score;
  }
};

// Inserts (key v, expert j) into the list keys/idx[0, n) kept sorted best first, holding at
// most `cap` entries. Experts must be offered in ascending index order: an equal key then
// lands after the ones already there, which gives ties to the lower expert index.
template <typename acc_t>
SWITCHYARD_HOST_DEVICE SWITCHYARD_FORCE_INLINE void topk_insert(acc_t* keys, int64_t* idx,
                                                                 int64_t& n, int64_t cap, acc_t v,
                                                                 int64_t j) {
  int64_t pos;
  if (n < cap) {
    pos = n++;
  } else {
    if (!(v > keys[cap - 1])) return;
    pos = cap - 1;
  }
  while (pos > 0 && v > keys[pos - 1]) {
    keys[pos] = keys[pos - 1];
    idx[pos] = idx[pos - 1];
    --pos;
  }
  keys[pos] = v;
  idx[pos] = j;
}

// Offers experts [lo, hi) in ascending order to the best-first list.
template <class KeyFn, typename acc_t>
SWITCHYARD_HOST_DEVICE inline void select_range(const KeyFn& key, int64_t lo, int64_t hi,
                                                acc_t* keys, int64_t* idx, int64_t& n,
                                                int64_t cap) {
  for (int64_t j = lo; j < hi; ++j) topk_insert(keys, idx, n, cap, key(j), j);
}

// Largest key of experts [lo, hi).
template <class KeyFn>
SWITCHYARD_HOST_DEVICE inline typename KeyFn::acc_t max_key(const KeyFn& key, int64_t lo,
                                                            int64_t hi) {
  using acc_t = typename KeyFn::acc_t;
  acc_t m = key(lo);
  SWITCHYARD_SIMD_REDUCTION(max, m)
  for (int64_t j = lo + 1; j < hi; ++j) {
    const acc_t v = key(j);
    m = v > m ? v : m;
  }
  return m;
}

// Note [Top-k by threshold]
// Split the E experts into K disjoint chunks and take each chunk's best key: those are K
// distinct experts, so the smallest of the K maxima is a lower bound ("floor") of the K-th
// best key, and the top-k lies among the experts whose key reaches it (for random logits
// about 2.5K of them). A vectorized compare over tiles of 64 keys flags them, 8-key words
// without a flag are skipped, and the candidates are ranked by counting: candidate i goes
// to position #{better candidates}, "better" being a higher key, or an equal key and a
// lower index. Almost no branch depends on the data, so little mispredicts (the branchy
// insertion into a sorted list cost ~20 cycles per expert considered). Too many candidates
// (ties: a freshly initialised router's logits are all equal) or NaN keys fall back to
// that insertion. The candidates live on the stack (a smaller frame on the GPU).
#if defined(__CUDA_ARCH__)
constexpr int64_t kMaxRankedCandidates = 32;
#else
constexpr int64_t kMaxRankedCandidates = 64;
#endif

// Writes the K best of n candidates (non-NaN keys, in ascending expert order, n <=
// kMaxRankedCandidates, cand_key with room up to a multiple of 4) to keys/idx, best first:
// rank_i = #{b : key_b > key_i, or key_b == key_i and b < i} is a permutation of [0, n).
template <typename acc_t>
SWITCHYARD_HOST_DEVICE inline void rank_candidates(acc_t* cand_key, const int64_t* cand_idx,
                                                   int64_t n, int64_t K, acc_t* keys,
                                                   int64_t* idx) {
  const int m = static_cast<int>(n);
  const int padded = (m + 3) / 4 * 4;  // whole vectors; the padding never counts
  for (int b = m; b < padded; ++b) cand_key[b] = negative_infinity<acc_t>();
  acc_t sorted_key[kMaxRankedCandidates];
  int64_t sorted_idx[kMaxRankedCandidates];
  for (int i = 0; i < m; ++i) {
    const acc_t v = cand_key[i];
    int rank = 0;
    for (int b = 0; b < padded; ++b) {
      rank += (cand_key[b] > v) | ((cand_key[b] == v) & (b < i));
    }
    sorted_key[rank] = v;
    sorted_idx[rank] = cand_idx[i];
  }
  for (int64_t r = 0; r < K; ++r) {
    keys[r] = sorted_key[r];
    idx[r] = sorted_idx[r];
  }
}

template <class KeyFn, typename acc_t>
SWITCHYARD_HOST_DEVICE inline void select_topk_by_threshold(const KeyFn& key, int64_t E,
                                                            int64_t K, acc_t* keys,
                                                            int64_t* idx) {
  if (K == 1) {  // the first expert holding the maximum (a NaN maximum takes the slow path)
    const acc_t m = max_key(key, 0, E);
    for (int64_t j = 0; j < E; ++j) {
      if (key(j) == m) {
        keys[0] = m;
        idx[0] = j;
        return;
      }
    }
  }
  acc_t cand_key[kMaxRankedCandidates];
  int64_t cand_idx[kMaxRankedCandidates];
  if (K == E && E <= kMaxRankedCandidates) {
    // every expert is selected: rank them all (NaN keys take the general path)
    bool finite_order = true;
    for (int64_t j = 0; j < E; ++j) {
      cand_key[j] = key(j);
      cand_idx[j] = j;
      finite_order &= cand_key[j] == cand_key[j];
    }
    if (finite_order) {
      rank_candidates(cand_key, cand_idx, E, K, keys, idx);
      return;
    }
  }
  // 1. the floor: the smallest chunk maximum. Contiguous chunks when long enough to
  //    vectorize a max reduction, else strided chunks {j : j mod K = c} (an elementwise max).
  const int64_t chunk = E / K;
  if (chunk >= 16) {
    for (int64_t c = 0; c < K; ++c) keys[c] = max_key(key, c * chunk, (c + 1) * chunk);
  } else {
    for (int64_t c = 0; c < K; ++c) keys[c] = key(c);
    for (int64_t r = 1; r < chunk; ++r) {
      for (int64_t c = 0; c < K; ++c) {
        const acc_t v = key(r * K + c);
        keys[c] = v > keys[c] ? v : keys[c];
      }
    }
  }
  acc_t floor = keys[0];
  for (int64_t c = 1; c < K; ++c) floor = keys[c] < floor ? keys[c] : floor;

  // 2. gather the candidates (key >= floor) in ascending expert order: a vectorized
  //    compare per tile of 64 experts, then only the 8-expert words holding a hit are read
  int64_t n = 0;
  constexpr int64_t kTile = 64;
  uint8_t hit[kTile];
  for (int64_t base = 0; base < E && n <= kMaxRankedCandidates; base += kTile) {
    const int64_t len = E - base < kTile ? E - base : kTile;
    for (int64_t i = 0; i < len; ++i) hit[i] = key(base + i) >= floor;
    for (int64_t i = len; i < kTile; ++i) hit[i] = 0;
    for (int64_t w = 0; w < len; w += 8) {
      uint64_t word;
      std::memcpy(&word, hit + w, sizeof(word));
      if (word == 0) continue;
      for (int64_t i = w; i < w + 8; ++i) {
        if (n < kMaxRankedCandidates) {
          cand_key[n] = key(base + i);
          cand_idx[n] = base + i;
        }
        n += hit[i];
      }
    }
  }

  if (n >= K && n <= kMaxRankedCandidates) {
    // 3. rank the candidates; the K best land in keys/idx
    rank_candidates(cand_key, cand_idx, n, K, keys, idx);
    return;
  }
  // 4. fallback: insertion, above the floor when it is usable (not NaN)
  n = 0;
  if (floor == floor) {
    for (int64_t e = 0; e < E; ++e) {
      const acc_t v = key(e);
      if (v >= floor) topk_insert(keys, idx, n, K, v, e);
    }
  }
  if (n < K) {
    n = 0;
    select_range(key, 0, E, keys, idx, n, K);
  }
}

// Sorts a list best first: key descending, then expert index ascending.
template <typename acc_t>
SWITCHYARD_HOST_DEVICE inline void sort_best_first(acc_t* keys, int64_t* idx, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    const acc_t v = keys[i];
    const int64_t j = idx[i];
    int64_t pos = i;
    while (pos > 0 && (v > keys[pos - 1] || (v == keys[pos - 1] && j < idx[pos - 1]))) {
      keys[pos] = keys[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    keys[pos] = v;
    idx[pos] = j;
  }
}

// ---- top-k routing of one row --------------------------------------------------------------

// The per-row view of TopkRouterParams.
struct TopkRowConfig {
  int64_t num_experts = 0;  // E
  int64_t k = 1;
  int64_t num_routed = 0;   // E_r; experts >= E_r are outside every group
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  bool renormalize = true;
  double scaling_factor = 1.0;
  int64_t num_groups = 1;
  int64_t topk_groups = 1;
  GroupScore group_score = GroupScore::kMax;
  bool group_limited = false;  // groups restrict the choice (G > 1 and balanced or kept < G)
  bool score_keys = false;     // rank by score + bias rather than by logit
};

inline TopkRowConfig make_topk_row_config(const TopkRouterParams& p) {
  TopkRowConfig c;
  c.num_experts = p.num_experts;
  c.k = p.k;
  c.num_routed = p.num_routed_experts;
  c.score_func = p.score_func;
  c.renormalize = p.renormalize;
  c.scaling_factor = p.scaling_factor;
  c.num_groups = p.num_groups;
  c.topk_groups = p.topk_groups;
  c.group_score = p.group_score;
  c.group_limited = p.num_groups > 1 &&
                    (p.group_score == GroupScore::kBalanced || p.topk_groups < p.num_groups);
  c.score_keys = p.has_bias || (c.group_limited && p.group_score == GroupScore::kTop2Sum);
  return c;
}

// Scratch (acc_t elements) one row needs: group scores and kept-group flags.
inline int64_t topk_row_scratch_size(const TopkRowConfig& c) {
  return c.group_limited && c.group_score != GroupScore::kBalanced ? 2 * c.num_groups : 0;
}

// Selects the k best experts of a row into keys/idx (best first). `scratch` holds
// topk_row_scratch_size() elements.
template <class KeyFn, typename acc_t>
SWITCHYARD_HOST_DEVICE inline void select_topk(const KeyFn& key, const TopkRowConfig& c,
                                               acc_t* keys, int64_t* idx, acc_t* scratch) {
  const int64_t E = c.num_experts, K = c.k;
  int64_t n = 0;
  if (!c.group_limited) {
    // a few experts and a small k: plain insertion is cheapest (it rarely shifts)
    if (E <= 16 && K <= 2) {
      select_range(key, 0, E, keys, idx, n, K);
    } else {
      select_topk_by_threshold(key, E, K, keys, idx);
    }
    return;
  }
  const int64_t G = c.num_groups;
  const int64_t group_size = c.num_routed / G;
  if (c.group_score == GroupScore::kBalanced) {
    // Pangu MoGE: every group contributes exactly K/G experts (no local experts here).
    const int64_t per_group = K / G;
    for (int64_t g = 0; g < G; ++g) {
      int64_t ng = 0;
      select_range(key, g * group_size, (g + 1) * group_size, keys + g * per_group,
                   idx + g * per_group, ng, per_group);
    }
    sort_best_first(keys, idx, K);
    return;
  }
  // 1. score each group: its best key (max) or the sum of its two best keys (top2_sum).
  acc_t* group_scores = scratch;
  acc_t* group_kept = scratch + G;
  for (int64_t g = 0; g < G; ++g) {
    acc_t first = negative_infinity<acc_t>(), second = first;
    for (int64_t j = g * group_size; j < (g + 1) * group_size; ++j) {
      const acc_t v = key(j);
      if (v > first) {
        second = first;
        first = v;
      } else if (v > second) {
        second = v;
      }
    }
    group_scores[g] = c.group_score == GroupScore::kMax ? first : first + second;
  }
  // 2. keep the topk_groups best groups (ties to the lower group index).
  for (int64_t g = 0; g < G; ++g) {
    int64_t rank = 0;
    for (int64_t h = 0; h < G; ++h) {
      rank += group_scores[h] > group_scores[g] || (group_scores[h] == group_scores[g] && h < g);
    }
    group_kept[g] = rank < c.topk_groups ? acc_t(1) : acc_t(0);
  }
  // 3. top-k over the kept groups' experts and the local experts, in ascending index order.
  for (int64_t g = 0; g < G; ++g) {
    if (group_kept[g] != acc_t(0)) {
      select_range(key, g * group_size, (g + 1) * group_size, keys, idx, n, K);
    }
  }
  select_range(key, c.num_routed, E, keys, idx, n, K);
}

// Routes one token: writes its k experts (best first) to `experts` and their combine
// weights to `weights`. Before the weights are written, `weights` holds the selection keys.
template <class Fmt>
SWITCHYARD_HOST_DEVICE inline void topk_route_row(const typename Fmt::storage_t* x,
                                                  const typename Fmt::acc_t* bias,
                                                  const TopkRowConfig& c,
                                                  typename Fmt::acc_t* weights,
                                                  int64_t* experts,
                                                  typename Fmt::acc_t* scratch) {
  using acc_t = typename Fmt::acc_t;
  const int64_t E = c.num_experts, K = c.k;
  const bool softmax = c.score_func == ScoreFunc::kSoftmax;

  // 1. score and select
  acc_t max = 0, sum_exp = 1;
  bool have_stats = false;
  if (c.score_keys) {
    if (softmax) {
      max = row_max<Fmt>(x, E);
      sum_exp = row_sum_exp<Fmt>(x, E, max);
      have_stats = true;
    }
    const ScoreKey<Fmt> key{x, bias, c.score_func, max, sum_exp};
    select_topk(key, c, weights, experts, scratch);
  } else {
    const LogitKey<Fmt> key{x};
    select_topk(key, c, weights, experts, scratch);
  }

  // 2. weights, from the selected logits (in logit mode the keys already are those)
  if (c.score_keys) {
    for (int64_t j = 0; j < K; ++j) weights[j] = Fmt::load(x[experts[j]]);
  }
  const acc_t scale = static_cast<acc_t>(c.scaling_factor);
  if (softmax && c.renormalize) {
    // score_j / sum_selected score = softmax over the selected logits
    acc_t m = weights[0];
    for (int64_t j = 1; j < K; ++j) m = weights[j] > m ? weights[j] : m;
    for (int64_t j = 0; j < K; ++j) weights[j] = exp_acc(weights[j] - m);  // vectorizes
    acc_t z = 0;
    for (int64_t j = 0; j < K; ++j) z += weights[j];  // in order, as on the GPU
    for (int64_t j = 0; j < K; ++j) weights[j] = weights[j] / z * scale;
  } else if (softmax) {
    if (!have_stats) {
      // ranked by logit over all experts: the best key is the row max
      max = c.group_limited ? row_max<Fmt>(x, E) : weights[0];
      sum_exp = row_sum_exp<Fmt>(x, E, max);
    }
    for (int64_t j = 0; j < K; ++j) weights[j] = softmax_prob(weights[j], max, sum_exp) * scale;
  } else {
    for (int64_t j = 0; j < K; ++j) weights[j] = sigmoid_acc(weights[j]);
    acc_t z = 0;
    for (int64_t j = 0; j < K; ++j) z += weights[j];
    for (int64_t j = 0; j < K; ++j) {
      weights[j] = c.renormalize ? weights[j] / z * scale : weights[j] * scale;
    }
  }
}

// Backward of one row. `grad` holds dL/dw_j of each of the row's k slots (0 for a dropped
// slot); writes dL/dlogits of the row to dx (E elements, acc type). With p the scores,
// S the selected experts, lambda the scaling factor and g the slot gradients:
//   no renormalize:  dL/dp_j = lambda g_j                        (j in S)
//   renormalize:     dL/dp_j = lambda/Z (g_j - sum_i g_i q_i),   Z = sum_S p, q = p/Z
//   sigmoid:         dL/dx_j = dL/dp_j p_j (1 - p_j)
//   softmax:         dL/dx_i = p_i (dL/dp_i - sum_j dL/dp_j p_j)  (every expert i)
// For softmax + renormalize the second term vanishes (the weights are a softmax over the
// selected logits alone): dL/dx_j = lambda q_j (g_j - sum_i g_i q_i) on S, 0 elsewhere.
template <class Fmt>
SWITCHYARD_HOST_DEVICE inline void topk_backward_row(const typename Fmt::storage_t* x,
                                                     int64_t E, int64_t K,
                                                     const int64_t* experts,
                                                     const typename Fmt::acc_t* grad,
                                                     ScoreFunc score_func, bool renormalize,
                                                     double scaling_factor,
                                                     typename Fmt::acc_t* dx) {
  using acc_t = typename Fmt::acc_t;
  const acc_t scale = static_cast<acc_t>(scaling_factor);
  if (score_func == ScoreFunc::kSoftmax && renormalize) {
    acc_t m = Fmt::load(x[experts[0]]);
    for (int64_t j = 1; j < K; ++j) {
      const acc_t v = Fmt::load(x[experts[j]]);
      m = v > m ? v : m;
    }
    acc_t z = 0, gq = 0;
    for (int64_t j = 0; j < K; ++j) {
      const acc_t e = exp_acc(Fmt::load(x[experts[j]]) - m);
      z += e;
      gq += grad[j] * e;
    }
    gq /= z;
    for (int64_t i = 0; i < E; ++i) dx[i] = 0;
    for (int64_t j = 0; j < K; ++j) {
      const acc_t q = exp_acc(Fmt::load(x[experts[j]]) - m) / z;
      dx[experts[j]] = scale * q * (grad[j] - gq);
    }
  } else if (score_func == ScoreFunc::kSoftmax) {
    const acc_t m = row_max<Fmt>(x, E);
    const acc_t s = row_sum_exp<Fmt>(x, E, m);
    acc_t c = 0;  // sum_j dL/dp_j p_j
    for (int64_t j = 0; j < K; ++j) {
      c += scale * grad[j] * softmax_prob(Fmt::load(x[experts[j]]), m, s);
    }
    for (int64_t i = 0; i < E; ++i) dx[i] = -softmax_prob(Fmt::load(x[i]), m, s) * c;
    for (int64_t j = 0; j < K; ++j) {
      const acc_t p = softmax_prob(Fmt::load(x[experts[j]]), m, s);
      dx[experts[j]] += p * scale * grad[j];
    }
  } else {
    acc_t z = 0, gq = 0;
    if (renormalize) {
      for (int64_t j = 0; j < K; ++j) {
        const acc_t p = sigmoid_acc(Fmt::load(x[experts[j]]));
        z += p;
        gq += grad[j] * p;
      }
      gq /= z;
    }
    for (int64_t i = 0; i < E; ++i) dx[i] = 0;
    for (int64_t j = 0; j < K; ++j) {
      const acc_t p = sigmoid_acc(Fmt::load(x[experts[j]]));
      const acc_t dp = renormalize ? scale / z * (grad[j] - gq) : scale * grad[j];
      dx[experts[j]] = dp * p * (acc_t(1) - p);
    }
  }
}

// ---- expert choice ---------------------------------------------------------------------------

// Scores of one row (softmax over the row, or sigmoid), written to out[j * stride].
template <class Fmt>
SWITCHYARD_HOST_DEVICE inline void score_row(const typename Fmt::storage_t* x, int64_t E,
                                             ScoreFunc score_func, typename Fmt::acc_t* out,
                                             int64_t stride) {
  if (score_func == ScoreFunc::kSoftmax) {
    const auto m = row_max<Fmt>(x, E);
    const auto s = row_sum_exp<Fmt>(x, E, m);
    for (int64_t j = 0; j < E; ++j) out[j * stride] = softmax_prob(Fmt::load(x[j]), m, s);
  } else {
    for (int64_t j = 0; j < E; ++j) out[j * stride] = sigmoid_acc(Fmt::load(x[j]));
  }
}

// In place: dp (dL/dscores of one row, E elements) becomes dL/dlogits.
template <class Fmt>
SWITCHYARD_HOST_DEVICE inline void score_backward_row(const typename Fmt::storage_t* x,
                                                      int64_t E, ScoreFunc score_func,
                                                      typename Fmt::acc_t* dp) {
  using acc_t = typename Fmt::acc_t;
  if (score_func == ScoreFunc::kSoftmax) {
    const acc_t m = row_max<Fmt>(x, E);
    const acc_t s = row_sum_exp<Fmt>(x, E, m);
    acc_t c = 0;
    for (int64_t j = 0; j < E; ++j) c += dp[j] * softmax_prob(Fmt::load(x[j]), m, s);
    for (int64_t j = 0; j < E; ++j) dp[j] = softmax_prob(Fmt::load(x[j]), m, s) * (dp[j] - c);
  } else {
    for (int64_t j = 0; j < E; ++j) {
      const acc_t p = sigmoid_acc(Fmt::load(x[j]));
      dp[j] = dp[j] * p * (acc_t(1) - p);
    }
  }
}

// ---- dispatch --------------------------------------------------------------------------------

// Calls f(Format{}) with the element format of `type` (host code).
template <class F>
inline void dispatch_logits_type(LogitsType type, F&& f) {
  switch (type) {
    case LogitsType::kFloat32: f(Float32Format{}); return;
    case LogitsType::kFloat64: f(Float64Format{}); return;
    case LogitsType::kBFloat16: f(BFloat16Format{}); return;
    case LogitsType::kFloat16: f(Float16Format{}); return;
  }
}

}  // namespace switchyard::kernels
