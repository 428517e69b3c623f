// permute_tokens, unpermute_tokens and unpermute_tokens_backward on CUDA: argument checks
// and allocation (shared with the CPU in permute.cpp), the kernels in
// kernels/permute/permute_cuda.cu. Nothing here synchronizes with the host, so an
// out-of-range token id is caught by a device-side assertion, not by an exception here
// (Note [Token id checks] in kernels/permute/permute_cpu.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "kernels/permute/permute_cuda.h"
#include "switchyard/ops/permute_internal.h"

namespace switchyard::ops {
namespace {

// unpermute_tokens groups slots with 32-bit sort keys (token ids, T for the tail) and 32-bit
// slot numbers; every kernel launches one warp per slot or token. One limit for all three.
void check_cuda_sizes(const char* op, int64_t num_tokens, int64_t num_slots) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(num_tokens < kMax && num_slots <= kMax, op,
              ": on CUDA num_tokens must be below 2^31 - 1 and num_slots at most 2^31 - 1, "
              "got num_tokens = ",
              num_tokens, ", num_slots = ", num_slots);
}

at::Tensor permute_tokens_cuda(const at::Tensor& x, const at::Tensor& token_index,
                               const at::Tensor& expert_index) {
  const c10::cuda::CUDAGuard guard(x.device());
  detail::PermuteCall call = detail::prepare_permute_tokens(x, token_index, expert_index);
  check_cuda_sizes("permute_tokens", call.params.num_tokens, call.params.num_slots);
  kernels::permute_tokens_cuda(call.x.data_ptr(), call.token_index.data_ptr<int64_t>(),
                               call.expert_index.data_ptr<int64_t>(), call.params,
                               call.rows.data_ptr(), at::cuda::getCurrentCUDAStream());
  return call.rows;
}

at::Tensor unpermute_tokens_cuda(const at::Tensor& rows, const at::Tensor& token_index,
                                 const at::Tensor& expert_index,
                                 const std::optional<at::Tensor>& weights,
                                 c10::SymInt num_tokens) {
  const c10::cuda::CUDAGuard guard(rows.device());
  detail::UnpermuteCall call = detail::prepare_unpermute_tokens(
      rows, token_index, expert_index, weights, num_tokens.guard_int(__FILE__, __LINE__));
  check_cuda_sizes("unpermute_tokens", call.params.num_tokens, call.params.num_slots);
  const size_t bytes = kernels::unpermute_tokens_cuda_workspace_bytes(call.params);
  const at::Tensor ws =
      at::empty({static_cast<int64_t>(bytes)}, call.rows.options().dtype(at::kByte));
  kernels::unpermute_tokens_cuda(call.rows.data_ptr(), call.token_index.data_ptr<int64_t>(),
                                 call.expert_index.data_ptr<int64_t>(), call.weights_ptr(),
                                 call.params, call.y.data_ptr(), ws.data_ptr(), bytes,
                                 at::cuda::getCurrentCUDAStream());
  return call.y;
}

std::tuple<at::Tensor, at::Tensor> unpermute_tokens_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& rows, const at::Tensor& token_index,
    const at::Tensor& expert_index, const std::optional<at::Tensor>& weights, bool rows_grad,
    bool weights_grad) {
  const c10::cuda::CUDAGuard guard(rows.device());
  detail::UnpermuteBackwardCall call = detail::prepare_unpermute_tokens_backward(
      grad_y, rows, token_index, expert_index, weights, rows_grad, weights_grad);
  check_cuda_sizes("unpermute_tokens_backward", call.params.num_tokens, call.params.num_slots);
  kernels::unpermute_tokens_backward_cuda(
      call.grad_y.data_ptr(), weights_grad ? call.rows.data_ptr() : nullptr,
      call.token_index.data_ptr<int64_t>(), call.expert_index.data_ptr<int64_t>(),
      call.weights_ptr(), call.params, call.grad_rows_ptr(), call.grad_weights_ptr(),
      at::cuda::getCurrentCUDAStream());
  return call.results();
}

}  // namespace

TORCH_LIBRARY_IMPL(switchyard, CUDA, m) {
  m.impl("permute_tokens", &permute_tokens_cuda);
  m.impl("unpermute_tokens", &unpermute_tokens_cuda);
  m.impl("unpermute_tokens_backward", &unpermute_tokens_backward_cuda);
}

}  // namespace switchyard::ops
