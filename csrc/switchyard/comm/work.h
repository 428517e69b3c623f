// Work: the handle a non-blocking collective returns, so that communication can overlap
// computation. The handle owns everything the transfer touches until it completes.
//
// Note [What wait() means]
// MPI (CPU tensors): wait() blocks the calling thread until the collective has finished
// and its result is in place (including any post-processing: the float32 staging copy of
// bf16/fp16 reductions, the division of an average).
// NCCL (CUDA tensors): wait() does not block the host. It makes the caller's *current*
// CUDA stream wait for the communication stream, so kernels queued afterwards on that
// stream see the result. This is the same contract as the blocking forms on CUDA.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

namespace switchyard::comm {

class Work {
 public:
  Work() = default;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;
  // An MPI handle dropped before completion waits first: MPI may still be writing into the
  // buffers it keeps alive.
  virtual ~Work() = default;

  // See Note [What wait() means]. Idempotent. A failure aborts the job (runtime::fatal).
  virtual void wait() = 0;

  // True once the collective has finished (MPI: tested without blocking; NCCL: the
  // completion event has been reached on the device). Never blocks.
  virtual bool is_completed() = 0;

  // The tensor that receives the result: the output of all_to_all_v / all_gather /
  // reduce_scatter, or the tensor itself for all_reduce / broadcast; undefined for a
  // barrier. Read it only after wait().
  const at::Tensor& result() const { return result_; }

 protected:
  explicit Work(at::Tensor result) : result_(std::move(result)) {}
  at::Tensor result_;
};

using WorkHandle = std::shared_ptr<Work>;

}  // namespace switchyard::comm
