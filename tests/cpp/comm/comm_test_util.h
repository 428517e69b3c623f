// Helpers of the multi-rank Communicator tests: deterministic inputs every rank can
// rebuild for every other rank, so each rank checks what it received against values it
// computes itself.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "switchyard/runtime/runtime.h"

namespace switchyard::comm::testing {

inline const std::vector<at::ScalarType>& all_dtypes() {
  static const std::vector<at::ScalarType> d = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf,
                                                at::kLong,  at::kInt,    at::kByte};
  return d;
}

// The rows that `src` sends to `dst` in an all_to_all_v: small integers (exact in every
// dtype, uint8 and bfloat16 included) that differ per source, destination, row and column.
inline at::Tensor block(int src, int dst, int64_t rows, at::IntArrayRef trailing, at::ScalarType dtype) {
  std::vector<int64_t> shape{rows};
  shape.insert(shape.end(), trailing.begin(), trailing.end());
  const int64_t width = c10::multiply_integers(trailing);
  auto v = torch::arange(rows * width, torch::kDouble).reshape(shape);
  return ((v * 3 + src * 13 + dst * 5).remainder(61)).to(dtype);
}

// Concatenates blocks along rows (an empty list gives [0, *trailing]).
inline at::Tensor rows_cat(const std::vector<at::Tensor>& parts, at::IntArrayRef trailing, at::ScalarType dtype) {
  if (parts.empty()) {
    std::vector<int64_t> shape{0};
    shape.insert(shape.end(), trailing.begin(), trailing.end());
    return torch::empty(shape, torch::dtype(dtype));
  }
  return torch::cat(parts, 0);
}

// A tensor of rank-dependent values: small integers (exact in every dtype).
inline at::Tensor rank_values(int rank, at::IntArrayRef shape, at::ScalarType dtype) {
  auto v = torch::arange(c10::multiply_integers(shape), torch::kDouble).reshape(shape);
  return ((v * 7 + rank * 11).remainder(50)).to(dtype);
}

// Runs f, expects a c10::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << parts.front() << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// main() of a multi-rank GoogleTest binary: MPI before the tests, a failure anywhere fails
// every rank's exit code.
inline int run_all_tests_on_every_rank(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  runtime::init();
  const int failed = RUN_ALL_TESTS();
  int any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  runtime::finalize();
  return any_failed;
}

}  // namespace switchyard::comm::testing
