// The CPU permutation kernels (kernels/permute/permute_cpu.h) called directly: the baseline
// and the AVX2 copies of the row loops must return the same bits (Note [CPU vector paths]),
// for every row type, with row lengths that leave vector remainders. The operators always
// take the AVX2 copy where the CPU has one, so the Python tests cannot see the other.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ostream>
#include <vector>

#include "kernels/permute/permute_cpu.h"

namespace k = switchyard::kernels;

namespace {

struct Case {
  const char* name;
  at::ScalarType dtype;
  k::RowType type;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class PermuteKernels : public ::testing::TestWithParam<Case> {};

TEST_P(PermuteKernels, Avx2AndBaselineCopiesAgreeBitwise) {
  const Case c = GetParam();
  const auto acc = c.dtype == at::kDouble ? at::kDouble : at::kFloat;
  torch::manual_seed(3);
  for (const int64_t d : {1, 7, 33, 100}) {
    const int64_t T = 50, S = 140;
    const auto rows = torch::randn({S, d}).to(c.dtype);
    const auto grad_y = torch::randn({T, d}).to(c.dtype);
    const auto weights = torch::rand({S}).to(acc);
    const auto token_index = torch::randint(0, T, {S}, torch::kLong);
    auto expert_index = torch::randint(0, 4, {S}, torch::kLong);
    expert_index.index_put_({torch::rand({S}).lt(0.2)}, -1);  // a scattered "tail"

    k::PermuteParams p;
    p.num_tokens = T;
    p.num_slots = S;
    p.hidden = d;
    p.type = c.type;
    std::vector<at::Tensor> results;
    for (const bool avx2 : {true, false}) {
      p.allow_avx2 = avx2;
      auto y = torch::empty({T, d}, rows.options());
      auto grad_rows = torch::empty({S, d}, rows.options());
      auto grad_weights = torch::empty({S}, weights.options());
      ASSERT_EQ(k::unpermute_tokens_cpu(rows.data_ptr(), token_index.data_ptr<int64_t>(),
                                        expert_index.data_ptr<int64_t>(), weights.data_ptr(), p,
                                        y.data_ptr()),
                -1);
      ASSERT_EQ(k::unpermute_tokens_backward_cpu(
                    grad_y.data_ptr(), rows.data_ptr(), token_index.data_ptr<int64_t>(),
                    expert_index.data_ptr<int64_t>(), weights.data_ptr(), p,
                    grad_rows.data_ptr(), grad_weights.data_ptr()),
                -1);
      results.insert(results.end(), {y, grad_rows, grad_weights});
    }
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_TRUE(torch::equal(results[i], results[i + 3]))
          << "output " << i << " differs between the AVX2 and baseline copies, d=" << d;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(RowTypes, PermuteKernels,
                         ::testing::Values(Case{"float32", at::kFloat, k::RowType::kFloat32},
                                           Case{"float64", at::kDouble, k::RowType::kFloat64},
                                           Case{"bfloat16", at::kBFloat16, k::RowType::kBFloat16},
                                           Case{"float16", at::kHalf, k::RowType::kFloat16}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

}  // namespace
