// route_expert_choice on the CPU.
//
//   1. score every row (OpenMP over rows), written expert-major: scores_ET[e][t];
//   2. each expert (OpenMP over experts) takes its C best tokens (score descending, ties to
//      the lower token) with a partial selection, then orders them by token;
//   3. count the tokens no expert took.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/routing/routing_cpu.h"
#include "kernels/routing/routing_math.h"

namespace switchyard::kernels {
namespace {

constexpr int64_t kMinRowsPerThread = 256;

int threads_for(int64_t work, int requested) {
  const int64_t useful = std::max<int64_t>(1, work / kMinRowsPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(requested, useful)));
}

// Strict total order on tokens of one expert: higher score first (NaN lowest), then lower
// token index.
template <typename acc_t>
struct HigherScoreFirst {
  const acc_t* score;
  bool operator()(int64_t a, int64_t b) const {
    const acc_t sa = std::isnan(score[a]) ? -INFINITY : score[a];
    const acc_t sb = std::isnan(score[b]) ? -INFINITY : score[b];
    return sa > sb || (sa == sb && a < b);
  }
};

template <class Fmt>
void expert_choice_impl(const typename Fmt::storage_t* logits, const ExpertChoiceParams& p,
                        const ExpertChoiceOutputs& out) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, C = p.capacity;
  auto* weights = static_cast<acc_t*>(out.weights);
  for (int64_t e = 0; e < E; ++e) out.expert_counts[e] = C;
  if (T == 0 || C == 0) {
    *out.num_unrouted = T;
    return;
  }

  // 1. scores, expert-major [E,T]
  std::vector<acc_t> scores_ET(static_cast<size_t>(E) * T);
  const int row_threads = threads_for(T, p.num_threads);
#pragma omp parallel for num_threads(row_threads) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    score_row<Fmt>(logits + t * E, E, p.score_func, scores_ET.data() + t, T);
  }

  // 2. every expert takes its top-C tokens
  const int expert_threads =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(p.num_threads, E)));
  std::vector<int64_t> candidates(static_cast<size_t>(expert_threads) * T);
#pragma omp parallel num_threads(expert_threads)
  {
    int64_t* tokens = candidates.data() + static_cast<int64_t>(omp_get_thread_num()) * T;
#pragma omp for schedule(dynamic, 1)
    for (int64_t e = 0; e < E; ++e) {
      const acc_t* score = scores_ET.data() + e * T;
      std::iota(tokens, tokens + T, int64_t{0});
      if (C < T) std::nth_element(tokens, tokens + C, tokens + T, HigherScoreFirst<acc_t>{score});
      std::sort(tokens, tokens + C);
      for (int64_t i = 0; i < C; ++i) {
        out.token_index[e * C + i] = tokens[i];
        out.expert_index[e * C + i] = e;
        weights[e * C + i] = score[tokens[i]];
      }
    }
  }

  // 3. tokens no expert chose
  std::vector<uint8_t> chosen(T, 0);
  for (int64_t i = 0; i < E * C; ++i) chosen[out.token_index[i]] = 1;
  int64_t unrouted = 0;
  for (int64_t t = 0; t < T; ++t) unrouted += chosen[t] == 0;
  *out.num_unrouted = unrouted;
}

template <class Fmt>
void expert_choice_backward_impl(const typename Fmt::storage_t* logits,
                                 const typename Fmt::acc_t* grad_weights,
                                 const int64_t* token_index, const int64_t* expert_index,
                                 const ExpertChoiceParams& p, typename Fmt::acc_t* grad_logits) {
  using acc_t = typename Fmt::acc_t;
  const int64_t T = p.num_tokens, E = p.num_experts, C = p.capacity;
  // 1. dL/dscores, dense [T,E] (each (token, expert) pair occurs at most once)
  std::fill(grad_logits, grad_logits + T * E, acc_t(0));
  for (int64_t i = 0; i < E * C; ++i) {
    grad_logits[token_index[i] * E + expert_index[i]] = grad_weights[i];
  }
  // 2. per row, through the score function, in place
  const int nt = threads_for(T, p.num_threads);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    score_backward_row<Fmt>(logits + t * E, E, p.score_func, grad_logits + t * E);
  }
}

}  // namespace

void expert_choice_cpu(const void* logits, LogitsType type, const ExpertChoiceParams& p,
                       const ExpertChoiceOutputs& out) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    expert_choice_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits), p, out);
  });
}

void expert_choice_backward_cpu(const void* logits, LogitsType type, const void* grad_weights,
                                const int64_t* token_index, const int64_t* expert_index,
                                const ExpertChoiceParams& p, void* grad_logits) {
  dispatch_logits_type(type, [&](auto fmt) {
    using Fmt = decltype(fmt);
    using acc_t = typename Fmt::acc_t;
    expert_choice_backward_impl<Fmt>(static_cast<const typename Fmt::storage_t*>(logits),
                                     static_cast<const acc_t*>(grad_weights), token_index,
                                     expert_index, p, static_cast<acc_t*>(grad_logits));
  });
}

}  // namespace switchyard::kernels
