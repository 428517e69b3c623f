// Backend: what the MPI and NCCL implementations of the collectives provide. Internal to
// csrc/switchyard/comm: the Communicator checks every argument (shapes, splits, dtypes,
// devices), makes inputs contiguous and allocates outputs before calling a backend, so a
// backend only moves bytes and reports failures (Note [Collective failures are fatal]).
//
// `async` false: the returned Work is complete on return (MPI) or already ordered before
// the caller's current stream (NCCL); true: the caller waits on the Work.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "switchyard/comm/communicator.h"
#include "switchyard/comm/work.h"

namespace switchyard::comm::detail {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // send [sum(send_rows), *T], recv [sum(recv_rows), *T]; both contiguous, same dtype.
  virtual WorkHandle all_to_all_v(const at::Tensor& send, const at::Tensor& recv,
                                  const std::vector<int64_t>& send_rows,
                                  const std::vector<int64_t>& recv_rows, bool async) = 0;
  // Point-to-point (Communicator::send_recv): the same layout as all_to_all_v, but only
  // peers with a non-zero count exchange a message; not collective.
  virtual WorkHandle send_recv(const at::Tensor& send, const at::Tensor& recv,
                               const std::vector<int64_t>& send_rows,
                               const std::vector<int64_t>& recv_rows, bool async) = 0;
  // input [n, *T] (or 0-dim: n = 1), output [size*n, *T]; contiguous.
  virtual WorkHandle all_gather(const at::Tensor& input, const at::Tensor& output, bool async) = 0;
  // input [size*n, *T], output [n, *T]; contiguous; op kAvg only for floating dtypes.
  virtual WorkHandle reduce_scatter(const at::Tensor& input, const at::Tensor& output,
                                    ReduceOp op, bool async) = 0;
  // in place, contiguous.
  virtual WorkHandle all_reduce(const at::Tensor& tensor, ReduceOp op, bool async) = 0;
  virtual WorkHandle broadcast(const at::Tensor& tensor, int root, bool async) = 0;
};

}  // namespace switchyard::comm::detail
