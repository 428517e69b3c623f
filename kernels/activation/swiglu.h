// The SwiGLU activation of the experts' feed-forward, fused: one pass over the gate and up
// projections instead of the five or so an ATen expression makes (each pass streams
// arrays of tokens x ffn_hidden elements through memory, which on CPUs costs about as
// much as the matrix products' overhead budget).
//
//   forward:  h = silu(g) * u                    silu(g) = g / (1 + exp(-g))
//   backward: h = silu(g) * u (recomputed, for the down projection's weight gradient)
//             grad_u = grad_h * silu(g)
//             grad_g = grad_h * u * s * (1 + g * (1 - s)),   s = sigmoid(g)
//
// Arrays are contiguous, n elements each, of one element type; arithmetic in float
// (double for float64). The CPU loops take float32 and float64 (the operator computes
// bfloat16 / float16 on CPU with ATen); the CUDA kernels take all four. Any output
// pointer of the backward may alias grad_h.
#pragma once

#include <cstdint>

#include "kernels/common/host_device.h"

namespace switchyard::kernels {

enum class ActivationType : int32_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// The per-element arithmetic, shared by the CPU loops and the CUDA kernels (Acc is float
// or double). exp of a large -g gives inf and s = 0: no NaN for any finite g.
// The same operations, in the same order, as the h of swiglu_grads: the activation that
// backward recomputes is bit for bit the one forward produced.
template <typename Acc>
SWITCHYARD_HOST_DEVICE Acc swiglu_value(Acc g, Acc u, Acc exp_neg_g) {
  const Acc s = Acc(1) / (Acc(1) + exp_neg_g);
  return (g * s) * u;
}

template <typename Acc>
SWITCHYARD_HOST_DEVICE void swiglu_grads(Acc grad_h, Acc g, Acc u, Acc exp_neg_g, Acc* h,
                                         Acc* grad_g, Acc* grad_u) {
  const Acc s = Acc(1) / (Acc(1) + exp_neg_g);
  const Acc silu = g * s;
  *h = silu * u;
  *grad_u = grad_h * silu;
  *grad_g = grad_h * u * (s + silu * (Acc(1) - s));
}

void swiglu_forward_cpu(ActivationType type, const void* g, const void* u, void* h, int64_t n,
                        int num_threads);
void swiglu_backward_cpu(ActivationType type, const void* grad_h, const void* g, const void* u,
                         void* h, void* grad_g, void* grad_u, int64_t n, int num_threads);

#ifdef SWITCHYARD_WITH_CUDA
void swiglu_forward_cuda(ActivationType type, const void* g, const void* u, void* h, int64_t n,
                         void* stream);
void swiglu_backward_cuda(ActivationType type, const void* grad_h, const void* g, const void* u,
                          void* h, void* grad_g, void* grad_u, int64_t n, void* stream);
#endif

}  // namespace switchyard::kernels
