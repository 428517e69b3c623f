// C++ API of the grouped matrix products that run every expert's feed-forward in one call.
//
// Rows of `a` are grouped by expert: expert e owns counts[e] consecutive rows, in expert
// order, starting at row 0; rows past sum(counts) (the tail of a Routing's grouped arrays)
// are never read and come out 0. Experts with no rows cost nothing.
//
//   grouped_mm(a [N,k], b [E,k,n], counts [E])            out[rows of e] = a[rows of e] @ b[e]
//   grouped_mm(a [N,k], b [E,n,k], counts, trans_b=true)  out[rows of e] = a[rows of e] @ b[e]^T
//   grouped_mm_weight_grad(a [N,k], g [N,n], counts)      out[e] = a[rows of e]^T @ g[rows of e]
//
// Both call their torch.ops.switchyard.* operator through the dispatcher: grouped_mm is
// differentiable with respect to a and b (its backward is the other two products).
#pragma once

#include <ATen/core/Tensor.h>

namespace switchyard::ops {

at::Tensor grouped_mm(const at::Tensor& a_Nk, const at::Tensor& b_Ekn, const at::Tensor& counts_E,
                      bool trans_b = false);

at::Tensor grouped_mm_weight_grad(const at::Tensor& a_Nk, const at::Tensor& grad_Nn,
                                  const at::Tensor& counts_E);

namespace detail {

// Shape, dtype and device checks shared by the CPU, CUDA and Meta kernels.
void check_grouped_mm(const at::Tensor& a_Nk, const at::Tensor& b, const at::Tensor& counts_E,
                      bool trans_b);
void check_grouped_mm_weight_grad(const at::Tensor& a_Nk, const at::Tensor& grad_Nn,
                                  const at::Tensor& counts_E);

}  // namespace detail

}  // namespace switchyard::ops
