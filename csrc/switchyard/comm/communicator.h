// Communicator: a group of ranks and the collectives switchyard needs on at::Tensor --
// all_to_all_v, all_gather, reduce_scatter, all_reduce, broadcast, barrier -- each in a
// blocking form and a non-blocking one returning a Work handle. docs/communication.md is
// the user's page.
//
// Backends, chosen per call by the tensors' device:
//   CPU tensors  -> MPI  (mpi_backend.cpp) on the group's own MPI communicator
//   CUDA tensors -> NCCL (nccl_backend_cuda.cpp), a communicator bootstrapped through MPI
//                   on first use, on a dedicated stream ordered with the caller's stream
// `parallel.backend` (auto | mpi | nccl) can pin the choice; a tensor on the other kind of
// device is then an argument error.
//
// Note [Who may call]
// Every method that communicates is collective over the group: all its ranks call it, in
// the same order, with matching arguments (the receiver's recv_splits equal what the
// senders' send_splits send it; dtypes and trailing shapes agree). Local argument errors
// (wrong lengths, shapes, dtypes, devices) throw c10::Error before anything is sent. A
// failure inside the backend aborts the whole job through runtime::fatal with the
// operation, the group, the rank and the backend's message: a half-finished collective
// cannot be recovered from, and the other ranks must not be left waiting. MPI is
// initialised with MPI_THREAD_FUNNELED: call from the thread that called runtime::init().
//
// Layout: a tensor is seen as [rows, *trailing]; split counts are rows. Supported dtypes:
// float32, float64, bfloat16, float16, int64, int32, uint8.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "switchyard/comm/work.h"

namespace switchyard::comm {

enum class ReduceOp { kSum, kAvg, kMax, kMin };

// "sum" | "avg" | "max" | "min" -> ReduceOp; throws c10::Error naming the allowed values.
ReduceOp parse_reduce_op(std::string_view name);
const char* reduce_op_name(ReduceOp op);

// auto: by the tensor's device; mpi / nccl: only that backend (others' tensors rejected).
enum class BackendChoice { kAuto, kMpi, kNccl };
BackendChoice parse_backend_choice(std::string_view name);  // "auto" | "mpi" | "nccl"
const char* backend_choice_name(BackendChoice choice);

namespace detail {
struct CommState;
}  // namespace detail

class Communicator {
 public:
  // A new communicator over every rank of the job (an MPI_Comm_dup of MPI_COMM_WORLD),
  // named "world". Collective over the job; requires runtime::init(). Keep and reuse it:
  // each call creates a new MPI communicator.
  static Communicator world();

  // Splits this group (MPI_Comm_split): ranks passing the same color form one new group,
  // ordered by key. Collective over this group. `name` appears in error messages.
  Communicator split(int color, int key, std::string name) const;

  int rank() const;   // in this group
  int size() const;
  const std::string& name() const;
  // MPI_COMM_WORLD rank of each member, in group-rank order.
  const std::vector<int>& world_ranks() const;
  BackendChoice backend_choice() const;
  // Pins or frees the backend choice (parallel.backend). Affects every copy of this
  // Communicator (copies share one group).
  void set_backend_choice(BackendChoice choice);
  // "group 'expert_parallel' (rank 1 of 2, world ranks [2, 3])" for messages.
  std::string describe() const;

  // --- all_to_all_v ------------------------------------------------------------------
  // send [sum(send_splits), *T] -> [sum(recv_splits), *T]. send_splits[p] rows (taken in
  // order) go to group rank p; recv_splits[p] rows arrive from p, stored in peer order.
  // `out`, when given, must be a contiguous tensor of that shape, dtype and device.
  at::Tensor all_to_all_v(const at::Tensor& send, c10::IntArrayRef send_splits,
                          c10::IntArrayRef recv_splits, const at::Tensor& out = {});
  WorkHandle all_to_all_v_async(const at::Tensor& send, c10::IntArrayRef send_splits,
                                c10::IntArrayRef recv_splits, const at::Tensor& out = {});

  // --- send_recv (point-to-point; NOT collective) -------------------------------------
  // The layout of all_to_all_v, but only the pairs with a non-zero count communicate:
  // send_splits[p] > 0 sends that many rows to p, recv_splits[p] > 0 receives that many
  // from p (self included). A rank with no non-zero entry need not call at all. Each pair
  // must issue its matching calls in the same order (rows sent by p to q in p's i-th call
  // with a non-zero count to q arrive in q's i-th call with a non-zero count from p), and
  // the counts of a pair must agree. Used where both sides of each pair already know
  // what moves between them without asking the others (the dispatcher's overflow round,
  // Note [Speculative capacity] in dispatch/capacity_exchange.h).
  at::Tensor send_recv(const at::Tensor& send, c10::IntArrayRef send_splits,
                       c10::IntArrayRef recv_splits, const at::Tensor& out = {});
  WorkHandle send_recv_async(const at::Tensor& send, c10::IntArrayRef send_splits,
                             c10::IntArrayRef recv_splits, const at::Tensor& out = {});

  // --- all_gather ----------------------------------------------------------------------
  // Every rank gives [n, *T] (the same shape everywhere) -> [size*n, *T], rank p's rows at
  // [p*n, (p+1)*n). A 0-dim input gathers into [size].
  at::Tensor all_gather(const at::Tensor& input, const at::Tensor& out = {});
  WorkHandle all_gather_async(const at::Tensor& input, const at::Tensor& out = {});

  // --- reduce_scatter ------------------------------------------------------------------
  // [size*n, *T] -> [n, *T]: rank p receives the reduction over ranks of rows
  // [p*n, (p+1)*n). op: kSum or kAvg (floating dtypes only), kMax, kMin.
  at::Tensor reduce_scatter(const at::Tensor& input, ReduceOp op = ReduceOp::kSum,
                            const at::Tensor& out = {});
  WorkHandle reduce_scatter_async(const at::Tensor& input, ReduceOp op = ReduceOp::kSum,
                                  const at::Tensor& out = {});

  // --- all_reduce (in place; `tensor` must be contiguous) ------------------------------
  void all_reduce(const at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  WorkHandle all_reduce_async(const at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);

  // --- broadcast (in place from group rank `root`; `tensor` must be contiguous) --------
  void broadcast(const at::Tensor& tensor, int root = 0);
  WorkHandle broadcast_async(const at::Tensor& tensor, int root = 0);

  // --- barrier (host-level, over MPI whatever the tensors' device) ---------------------
  void barrier();
  WorkHandle barrier_async();

 private:
  explicit Communicator(std::shared_ptr<detail::CommState> state);
  std::shared_ptr<detail::CommState> state_;
};

}  // namespace switchyard::comm
