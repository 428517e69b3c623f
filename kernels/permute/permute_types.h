// Plain parameter records shared by the CPU and CUDA token-permutation kernels
// (permute_tokens, unpermute_tokens, unpermute_tokens_backward).
//
// No torch here: the operators in csrc/switchyard/ops/permute*.cpp validate their
// arguments, make them contiguous, allocate the outputs and fill these records; the kernels
// trust them -- except for the token ids, which only a pass over the data can check (see
// Note [Token id checks] in permute_cpu.h).
//
// Shape legend: T tokens, S slots (grouped routing entries), d hidden size.
#pragma once

#include <cstdint>

namespace switchyard::kernels {

// Element type of the token rows. The arithmetic type ("acc") is float for every type but
// Float64, which computes in double. Weights and weight gradients are always acc typed.
enum class RowType : int32_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

inline int64_t row_type_bytes(RowType type) {
  switch (type) {
    case RowType::kFloat64: return 8;
    case RowType::kFloat32: return 4;
    default: return 2;
  }
}

struct PermuteParams {
  int64_t num_tokens = 0;  // T: rows of x / y / grad_y
  int64_t num_slots = 0;   // S: length of token_index and expert_index, rows of `rows`
  int64_t hidden = 0;      // d: elements per row
  RowType type = RowType::kFloat32;
  int num_threads = 1;     // CPU only: OpenMP threads to use
  bool allow_avx2 = true;  // CPU only: use the AVX2 copies of the row loops where the CPU
                           // has AVX2 (same results; false lets tests check exactly that)
};

}  // namespace switchyard::kernels
