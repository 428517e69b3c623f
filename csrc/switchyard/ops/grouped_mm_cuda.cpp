// grouped_mm and grouped_mm_weight_grad on CUDA.
//
// Note [CUDA grouped products]
// bfloat16 with 16-byte aligned rows goes to torch's grouped GEMM (at::_grouped_mm: one
// launch for every expert, group offsets read on the device, so nothing waits for the
// host). Other dtypes and shapes fall back to one cuBLAS product per expert, which needs
// the counts on the host: that copy is an explicit synchronisation point, named in
// SYNC_POINT below so it shows up in a grep and in the docs (docs/moe_layer.md).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "switchyard/ops/grouped_mm.h"

namespace switchyard::ops {
namespace {

// SYNC_POINT(grouped_mm_counts): the per-expert fallback reads the counts on the host.
std::vector<int64_t> host_offsets_sync(const at::Tensor& counts_E) {
  const at::Tensor counts = counts_E.to(at::kCPU);
  std::vector<int64_t> offsets(counts.size(0) + 1, 0);
  for (int64_t e = 0; e < counts.size(0); ++e) {
    offsets[e + 1] = offsets[e] + counts.data_ptr<int64_t>()[e];
  }
  return offsets;
}

// Device-side int32 group ends for at::_grouped_mm.
at::Tensor group_ends(const at::Tensor& counts_E) {
  return counts_E.cumsum(0).to(at::kInt);
}

bool use_grouped_gemm(const at::Tensor& a, int64_t n) {
  // torch's grouped GEMM takes bfloat16 with 16-byte aligned leading dimensions.
  const auto* props = at::cuda::getCurrentDeviceProperties();
  return a.scalar_type() == at::kBFloat16 && props->major >= 9 && a.size(1) % 8 == 0 &&
         n % 8 == 0;
}

// Rows past sum(counts) are set to 0 without reading the counts on the host.
void zero_tail_rows(at::Tensor& out, const at::Tensor& counts_E) {
  const auto rows = at::arange(out.size(0), counts_E.options());
  out.masked_fill_(rows.ge(counts_E.sum()).unsqueeze(1), 0);
}

at::Tensor grouped_mm_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                           const at::Tensor& counts_E, bool trans_b) {
  detail::check_grouped_mm(a_in, b_in, counts_E, trans_b);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const int64_t n = trans_b ? b_in.size(1) : b_in.size(2);
  if (use_grouped_gemm(a, n)) {
    const at::Tensor b = trans_b ? b_in.transpose(1, 2) : b_in;
    at::Tensor out = at::_grouped_mm(a, b, group_ends(counts_E));
    zero_tail_rows(out, counts_E);
    return out;
  }
  const auto offsets = host_offsets_sync(counts_E);
  TORCH_CHECK(offsets.back() <= a.size(0), "grouped_mm: the counts sum to ", offsets.back(),
              " rows but a has only ", a.size(0));
  at::Tensor out = at::empty({a.size(0), n}, a.options());
  out.narrow(0, offsets.back(), a.size(0) - offsets.back()).zero_();
  for (int64_t e = 0; e < b_in.size(0); ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    auto dst = out.narrow(0, offsets[e], rows);
    at::mm_out(dst, a.narrow(0, offsets[e], rows), trans_b ? b_in[e].t() : b_in[e]);
  }
  return out;
}

at::Tensor grouped_mm_weight_grad_cuda(const at::Tensor& a_in, const at::Tensor& grad_in,
                                       const at::Tensor& counts_E) {
  detail::check_grouped_mm_weight_grad(a_in, grad_in, counts_E);
  const c10::cuda::CUDAGuard guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor g = grad_in.contiguous();
  const int64_t E = counts_E.size(0);
  if (use_grouped_gemm(a, g.size(1))) {
    // [k, N] x [N, n] with groups along N gives one [k, n] product per expert. An expert
    // without rows must get zeros whatever the GEMM leaves there: masked on the device.
    at::Tensor out = at::_grouped_mm(a.t(), g, group_ends(counts_E));
    out.masked_fill_(counts_E.eq(0).view({E, 1, 1}), 0);
    return out;
  }
  const auto offsets = host_offsets_sync(counts_E);
  at::Tensor out = at::zeros({E, a.size(1), g.size(1)}, a.options());
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    auto dst = out[e];
    at::mm_out(dst, a.narrow(0, offsets[e], rows).t(), g.narrow(0, offsets[e], rows));
  }
  return out;
}

}  // namespace
}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CUDA, m) {
  m.impl("grouped_mm", &switchyard::ops::grouped_mm_cuda);
  m.impl("grouped_mm_weight_grad", &switchyard::ops::grouped_mm_weight_grad_cuda);
}
