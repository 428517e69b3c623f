// Rotary position embedding (RoPE), in Llama's "rotate half" convention: a head vector's
// first and second halves form the pairs (x[j], x[j + hd/2]) rotated by the angle
// position * theta^(-2j/hd).
//
//   rope(x) = x * cos + rotate_half(x) * sin,  rotate_half([x1, x2]) = [-x2, x1]
//
// The cos/sin tables [max_seq_len, hd] are computed in float64 and cast to the input's
// dtype, once per (device, dtype), and kept here rather than as module buffers: a LibTorch
// buffer is always part of the state_dict, and Hugging Face checkpoints have no such key
// (their inv_freq is a non-persistent buffer). They are a pure function of the options,
// so nothing is lost.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <mutex>
#include <vector>

namespace switchyard::nn {

class RotaryEmbedding {
 public:
  RotaryEmbedding(int64_t head_dim, int64_t max_seq_len, double theta);

  // q or k [B, H, S, hd] -> rotated, same shape and dtype; positions 0 .. S-1.
  at::Tensor apply(const at::Tensor& x_BHSh) const;

  // {cos, sin}, each [S, hd] in `like`'s dtype and device.
  std::pair<at::Tensor, at::Tensor> tables(int64_t seq_len, const at::Tensor& like) const;

  int64_t head_dim() const { return head_dim_; }
  int64_t max_seq_len() const { return max_seq_len_; }

 private:
  int64_t head_dim_;
  int64_t max_seq_len_;
  double theta_;
  at::Tensor cos_f64_, sin_f64_;  // [max_seq_len, hd], CPU float64
  mutable std::mutex mutex_;
  mutable std::vector<std::pair<at::Tensor, at::Tensor>> cache_;  // per (device, dtype)
};

}  // namespace switchyard::nn
