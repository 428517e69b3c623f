#include "switchyard/nn/rotary.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>

namespace switchyard::nn {

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, int64_t max_seq_len, double theta)
    : head_dim_(head_dim), max_seq_len_(max_seq_len), theta_(theta) {
  TORCH_CHECK_VALUE(head_dim >= 2 && head_dim % 2 == 0,
                    "RotaryEmbedding: head_dim must be even and >= 2, got ", head_dim);
  TORCH_CHECK_VALUE(max_seq_len >= 1, "RotaryEmbedding: max_seq_len must be >= 1, got ", max_seq_len);
  TORCH_CHECK_VALUE(theta > 0, "RotaryEmbedding: theta must be > 0, got ", theta);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  // inv_freq[j] = theta^(-2j/hd), j < hd/2; angle[p, j] = p * inv_freq[j].
  const at::Tensor inv_freq = at::pow(theta, -at::arange(0, head_dim, 2, f64) / head_dim);
  const at::Tensor angle = at::outer(at::arange(max_seq_len, f64), inv_freq);
  const at::Tensor emb = at::cat({angle, angle}, -1);  // [max_seq_len, hd]: both halves
  cos_f64_ = emb.cos();
  sin_f64_ = emb.sin();
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::tables(int64_t seq_len,
                                                          const at::Tensor& like) const {
  TORCH_CHECK(seq_len <= max_seq_len_, "RotaryEmbedding: sequence length ", seq_len,
              " exceeds max_seq_len = ", max_seq_len_, " (model.max_seq_len)");
  const std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [c, s] : cache_) {
    if (c.device() == like.device() && c.scalar_type() == like.scalar_type()) {
      return {c.narrow(0, 0, seq_len), s.narrow(0, 0, seq_len)};
    }
  }
  // Built outside inference mode even when called inside it: an inference tensor could not
  // be saved for backward by a later training forward that reuses the cache.
  const c10::InferenceMode normal_tensors(false);
  const auto opts = like.options().requires_grad(false);
  cache_.emplace_back(cos_f64_.to(opts), sin_f64_.to(opts));
  const auto& [c, s] = cache_.back();
  return {c.narrow(0, 0, seq_len), s.narrow(0, 0, seq_len)};
}

at::Tensor RotaryEmbedding::apply(const at::Tensor& x_BHSh) const {
  TORCH_CHECK(x_BHSh.dim() == 4 && x_BHSh.size(3) == head_dim_,
              "RotaryEmbedding: expected x of shape [B, H, S, ", head_dim_, "], got ",
              x_BHSh.sizes());
  const auto [cos_Sh, sin_Sh] = tables(x_BHSh.size(2), x_BHSh);
  const int64_t half = head_dim_ / 2;
  const at::Tensor rotated = at::cat({-x_BHSh.narrow(-1, half, half), x_BHSh.narrow(-1, 0, half)}, -1);
  return x_BHSh * cos_Sh + rotated * sin_Sh;
}

}  // namespace switchyard::nn
