// The MPI backend (CPU tensors). Every collective has a blocking call (MPI_Alltoallv, ...)
// and a non-blocking one (MPI_Ialltoallv, ...); the blocking forms do not go through the
// non-blocking ones, because Open MPI's blocking collectives use tuned algorithms its
// non-blocking ones (libnbc) lack.
//
// Note [bf16 and fp16 reductions over MPI]
// MPI has no 16-bit floating-point types. Reductions of bfloat16 / float16 tensors copy
// them into a float32 staging buffer, reduce that with MPI_FLOAT, and round the result
// back once (after the division of an average). The alternative, a user-defined MPI_Op
// over 2-byte elements, halves the bytes on the wire but rounds to 16 bits after every
// pairwise addition inside the reduction tree, so the result depends on the tree shape and
// loses up to log2(size) bits more; summing in float32 gives the correctly rounded sum for
// the group sizes an expert-parallel job has, identical on every rank and whatever MPI's
// algorithm. docs/communication.md quotes the measured cost. Moves without arithmetic
// (all_to_all_v, all_gather, broadcast) never stage: they copy bytes.
#include "switchyard/comm/mpi_backend.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <utility>

namespace switchyard::comm::detail {
namespace {

int64_t g_max_count = INT_MAX;  // Note [MPI counts are int]; lowered only by tests

int64_t row_bytes_of(const at::Tensor& t) {
  int64_t elems = 1;
  for (int64_t d = 1; d < t.dim(); ++d) elems *= t.size(d);
  return elems * static_cast<int64_t>(t.element_size());
}

int64_t rows_of(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }

bool is_half_precision(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// The MPI type a reduction runs in (16-bit floats: their float32 staging buffer).
MPI_Datatype reduction_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: case at::kBFloat16: case at::kHalf: return MPI_FLOAT;
    case at::kDouble: return MPI_DOUBLE;
    case at::kLong: return MPI_INT64_T;
    case at::kInt: return MPI_INT32_T;
    case at::kByte: return MPI_UINT8_T;
    default: TORCH_INTERNAL_ASSERT(false, "MPI backend: unchecked dtype ", t);
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: case ReduceOp::kAvg: return MPI_SUM;  // kAvg divides afterwards
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  TORCH_INTERNAL_ASSERT(false, "MPI backend: unknown ReduceOp");
}

int to_int(int64_t v) {
  TORCH_INTERNAL_ASSERT(v >= 0 && v <= INT_MAX, "MPI count ", v, " escaped the limit checks");
  return static_cast<int>(v);
}

// The unit byte-moving transfers count in: MPI_BYTE when every count and displacement in
// bytes fits the limit, else a committed contiguous type of one row (freed when this goes
// out of scope: MPI lets operations already started with it finish).
class TransferUnit {
 public:
  TransferUnit(const char* op, int64_t row_bytes, int64_t max_total_bytes, int64_t max_rows) {
    if (max_total_bytes <= g_max_count) return;  // bytes
    TORCH_CHECK(row_bytes <= g_max_count && max_rows <= g_max_count, op,
                " (MPI backend): a transfer of ", max_rows, " rows of ", row_bytes,
                " bytes exceeds what MPI's int counts can describe (at most ", g_max_count,
                " rows of at most ", g_max_count, " bytes); split the tensor into smaller calls");
    MPI_Type_contiguous(to_int(row_bytes), MPI_BYTE, &type_);
    MPI_Type_commit(&type_);
    unit_bytes_ = row_bytes;
  }
  TransferUnit(const TransferUnit&) = delete;
  TransferUnit& operator=(const TransferUnit&) = delete;
  ~TransferUnit() {
    if (type_ != MPI_BYTE) MPI_Type_free(&type_);
  }
  MPI_Datatype type() const { return type_; }
  int count(int64_t bytes) const { return to_int(bytes / unit_bytes_); }

 private:
  MPI_Datatype type_ = MPI_BYTE;
  int64_t unit_bytes_ = 1;
};

// [begin, end) element ranges of at most g_max_count elements covering [0, total).
std::vector<std::pair<int64_t, int64_t>> chunks(int64_t total) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t begin = 0; begin < total; begin += g_max_count) {
    out.emplace_back(begin, std::min(total, begin + g_max_count));
  }
  return out;
}

class MpiWork final : public Work {
 public:
  MpiWork(GroupPtr group, const char* op, at::Tensor result)
      : Work(std::move(result)), group_(std::move(group)), op_(op) {}
  ~MpiWork() override {
    if (!done_) wait();
  }

  // Starts (async) or runs (blocking) one MPI call. `call` receives the request pointer,
  // or nullptr for the blocking form, and returns the MPI return code.
  template <typename Call>
  void post(bool async, const char* name, Call&& call) {
    if (async) {
      MPI_Request request = MPI_REQUEST_NULL;
      check_mpi(call(&request), *group_, op_, name);
      requests_.push_back(request);
    } else {
      check_mpi(call(nullptr), *group_, op_, name);
    }
  }
  void keep(at::Tensor t) { keep_.push_back(std::move(t)); }
  // Count and displacement arrays of the v-collectives: MPI may read them until completion.
  std::vector<std::vector<int>>& int_arrays() { return int_arrays_; }
  // Runs once, on the waiting thread, after every request has completed.
  void then(std::function<void()> f) { finish_ = std::move(f); }
  // Blocking calls: everything already happened; run the post-processing now.
  void mark_done_if_blocking(bool async) {
    if (!async) complete();
  }

  void wait() override {
    if (done_) return;
    if (!requests_.empty()) {
      std::vector<MPI_Status> statuses(requests_.size());
      const int rc = MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), statuses.data());
      report(rc, statuses, "MPI_Waitall");
    }
    complete();
  }

  bool is_completed() override {
    if (done_) return true;
    int flag = 1;
    if (!requests_.empty()) {
      std::vector<MPI_Status> statuses(requests_.size());
      const int rc =
          MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag, statuses.data());
      report(rc, statuses, "MPI_Testall");
    }
    if (flag) complete();
    return flag != 0;
  }

 private:
  void report(int rc, const std::vector<MPI_Status>& statuses, const char* call) {
    if (rc == MPI_SUCCESS) return;
    if (rc == MPI_ERR_IN_STATUS) {
      for (const MPI_Status& s : statuses) {
        if (s.MPI_ERROR != MPI_SUCCESS && s.MPI_ERROR != MPI_ERR_PENDING) rc = s.MPI_ERROR;
      }
    }
    collective_failed(*group_, op_, call, mpi_error_string(rc));
  }

  void complete() {
    done_ = true;
    requests_.clear();
    if (finish_) std::exchange(finish_, nullptr)();
    keep_.clear();
    int_arrays_.clear();
  }

  GroupPtr group_;
  const char* op_;
  std::vector<MPI_Request> requests_;
  std::vector<at::Tensor> keep_;
  std::vector<std::vector<int>> int_arrays_;
  std::function<void()> finish_;
  bool done_ = false;
};

class MpiBackend final : public Backend {
 public:
  explicit MpiBackend(GroupPtr group) : group_(std::move(group)) {}
  const char* name() const override { return "mpi"; }

  WorkHandle all_to_all_v(const at::Tensor& send, const at::Tensor& recv,
                          const std::vector<int64_t>& send_rows,
                          const std::vector<int64_t>& recv_rows, bool async) override {
    auto work = std::make_shared<MpiWork>(group_, "all_to_all_v", recv);
    const int64_t row_bytes = row_bytes_of(send);
    const int64_t max_rows = std::max(send.size(0), recv.size(0));
    const TransferUnit unit("all_to_all_v", row_bytes, max_rows * row_bytes, max_rows);
    // Counts and displacements in units, kept alive by the Work (Note [MPI counts are int]).
    const int n = group_->size;
    auto& arrays = work->int_arrays();
    arrays.assign(4, std::vector<int>(n));
    auto& sc = arrays[0];
    auto& sd = arrays[1];
    auto& rc = arrays[2];
    auto& rd = arrays[3];
    int64_t send_at = 0, recv_at = 0;
    for (int p = 0; p < n; ++p) {
      sc[p] = unit.count(send_rows[p] * row_bytes);
      sd[p] = unit.count(send_at * row_bytes);
      rc[p] = unit.count(recv_rows[p] * row_bytes);
      rd[p] = unit.count(recv_at * row_bytes);
      send_at += send_rows[p];
      recv_at += recv_rows[p];
    }
    const MPI_Datatype type = unit.type();
    const MPI_Comm comm = group_->comm;
    void* recv_ptr = recv.data_ptr();
    const void* send_ptr = send.data_ptr();
    work->post(async, async ? "MPI_Ialltoallv" : "MPI_Alltoallv", [&](MPI_Request* r) {
      return r ? MPI_Ialltoallv(send_ptr, sc.data(), sd.data(), type, recv_ptr, rc.data(), rd.data(),
                                type, comm, r)
               : MPI_Alltoallv(send_ptr, sc.data(), sd.data(), type, recv_ptr, rc.data(), rd.data(),
                               type, comm);
    });
    if (async) {
      work->keep(send);
      work->keep(recv);
    }
    work->mark_done_if_blocking(async);
    return work;
  }

  // Point-to-point: an MPI_Isend / MPI_Irecv per peer with a non-zero count (self
  // included: MPI matches a rank's messages to itself), then MPI_Waitall unless async.
  // Point-to-point traffic has its own matching context, apart from the collectives on the
  // same communicator; one tag and MPI's non-overtaking rule keep each pair's calls in order.
  WorkHandle send_recv(const at::Tensor& send, const at::Tensor& recv, const std::vector<int64_t>& send_rows,
                       const std::vector<int64_t>& recv_rows, bool async) override {
    constexpr int kTag = 0x5359;  // "SY"
    auto work = std::make_shared<MpiWork>(group_, "send_recv", recv);
    const int64_t row_bytes = row_bytes_of(send);
    const int64_t max_rows = std::max(send.size(0), recv.size(0));
    const TransferUnit unit("send_recv", row_bytes, max_rows * row_bytes, max_rows);
    const MPI_Datatype type = unit.type();
    const MPI_Comm comm = group_->comm;
    auto* recv_ptr = static_cast<char*>(recv.data_ptr());
    const auto* send_ptr = static_cast<const char*>(send.data_ptr());
    int64_t send_at = 0, recv_at = 0;
    // Receives first, so a message to self always finds its receive posted.
    for (int p = 0; p < group_->size; ++p) {
      if (recv_rows[p] > 0) {
        const int count = unit.count(recv_rows[p] * row_bytes);
        void* ptr = recv_ptr + recv_at * row_bytes;
        work->post(true, "MPI_Irecv", [&](MPI_Request* r) { return MPI_Irecv(ptr, count, type, p, kTag, comm, r); });
      }
      recv_at += recv_rows[p];
    }
    for (int p = 0; p < group_->size; ++p) {
      if (send_rows[p] > 0) {
        const int count = unit.count(send_rows[p] * row_bytes);
        const void* ptr = send_ptr + send_at * row_bytes;
        work->post(true, "MPI_Isend", [&](MPI_Request* r) { return MPI_Isend(ptr, count, type, p, kTag, comm, r); });
      }
      send_at += send_rows[p];
    }
    work->keep(send);
    work->keep(recv);
    if (!async) work->wait();
    return work;
  }

  WorkHandle all_gather(const at::Tensor& input, const at::Tensor& output, bool async) override {
    auto work = std::make_shared<MpiWork>(group_, "all_gather", output);
    const int64_t row_bytes = input.dim() == 0 ? input.element_size() : row_bytes_of(input);
    const int64_t rows = rows_of(input);
    const TransferUnit unit("all_gather", row_bytes, rows * row_bytes * group_->size, rows);
    const int count = unit.count(rows * row_bytes);
    const MPI_Datatype type = unit.type();
    const MPI_Comm comm = group_->comm;
    work->post(async, async ? "MPI_Iallgather" : "MPI_Allgather", [&](MPI_Request* r) {
      return r ? MPI_Iallgather(input.data_ptr(), count, type, output.data_ptr(), count, type, comm, r)
               : MPI_Allgather(input.data_ptr(), count, type, output.data_ptr(), count, type, comm);
    });
    if (async) {
      work->keep(input);
      work->keep(output);
    }
    work->mark_done_if_blocking(async);
    return work;
  }

  WorkHandle reduce_scatter(const at::Tensor& input, const at::Tensor& output, ReduceOp op,
                            bool async) override {
    auto work = std::make_shared<MpiWork>(group_, "reduce_scatter", output);
    const int64_t block = output.numel();
    TORCH_CHECK(block <= g_max_count, "reduce_scatter (MPI backend): each rank's block has ", block,
                " elements, more than MPI's int count allows (", g_max_count,
                "); reduce the tensor in several smaller calls");
    const bool staged = is_half_precision(input.scalar_type());
    at::Tensor in = input, out = output;
    if (staged) {
      const at::Tensor s = staging(input.numel() + output.numel());
      in = s.narrow(0, 0, input.numel()).view(input.sizes()).copy_(input);
      out = s.narrow(0, input.numel(), output.numel()).view(output.sizes());
    }
    const MPI_Datatype type = reduction_type(input.scalar_type());
    const MPI_Op mop = mpi_op(op);
    const MPI_Comm comm = group_->comm;
    const int count = to_int(block);
    work->post(async, async ? "MPI_Ireduce_scatter_block" : "MPI_Reduce_scatter_block", [&](MPI_Request* r) {
      return r ? MPI_Ireduce_scatter_block(in.data_ptr(), out.data_ptr(), count, type, mop, comm, r)
               : MPI_Reduce_scatter_block(in.data_ptr(), out.data_ptr(), count, type, mop, comm);
    });
    if (async) {
      work->keep(in);
      work->keep(out);
      work->keep(output);
    }
    const int size = group_->size;
    work->then([out, output, staged, op, size] {
      if (op == ReduceOp::kAvg) out.div_(size);
      if (staged) output.copy_(out);
    });
    work->mark_done_if_blocking(async);
    return work;
  }

  WorkHandle all_reduce(const at::Tensor& tensor, ReduceOp op, bool async) override {
    auto work = std::make_shared<MpiWork>(group_, "all_reduce", tensor);
    const bool staged = is_half_precision(tensor.scalar_type());
    const at::Tensor buf = staged ? staging(tensor.numel()).view(tensor.sizes()).copy_(tensor) : tensor;
    const MPI_Datatype type = reduction_type(tensor.scalar_type());
    const MPI_Op mop = mpi_op(op);
    const MPI_Comm comm = group_->comm;
    auto* base = static_cast<char*>(buf.data_ptr());
    const int64_t elem = buf.element_size();
    for (const auto& [begin, end] : chunks(buf.numel())) {
      void* ptr = base + begin * elem;
      const int count = to_int(end - begin);
      work->post(async, async ? "MPI_Iallreduce" : "MPI_Allreduce", [&](MPI_Request* r) {
        return r ? MPI_Iallreduce(MPI_IN_PLACE, ptr, count, type, mop, comm, r)
                 : MPI_Allreduce(MPI_IN_PLACE, ptr, count, type, mop, comm);
      });
    }
    if (async) {
      work->keep(buf);
      work->keep(tensor);
    }
    const int size = group_->size;
    work->then([buf, tensor, staged, op, size] {
      if (op == ReduceOp::kAvg) buf.div_(size);
      if (staged) tensor.copy_(buf);
    });
    work->mark_done_if_blocking(async);
    return work;
  }

  WorkHandle broadcast(const at::Tensor& tensor, int root, bool async) override {
    auto work = std::make_shared<MpiWork>(group_, "broadcast", tensor);
    const MPI_Comm comm = group_->comm;
    auto* base = static_cast<char*>(tensor.data_ptr());
    for (const auto& [begin, end] : chunks(tensor.numel() * tensor.element_size())) {
      void* ptr = base + begin;
      const int count = to_int(end - begin);
      work->post(async, async ? "MPI_Ibcast" : "MPI_Bcast", [&](MPI_Request* r) {
        return r ? MPI_Ibcast(ptr, count, MPI_BYTE, root, comm, r) : MPI_Bcast(ptr, count, MPI_BYTE, root, comm);
      });
    }
    if (async) work->keep(tensor);
    work->mark_done_if_blocking(async);
    return work;
  }

 private:
  // Note [Staging buffer reuse]: a float32 buffer of at least `numel` elements for a 16-bit
  // reduction. Reused from call to call -- a fresh allocation costs page faults on every
  // call and made a staged all_reduce several times slower than a float32 one -- unless an
  // operation still in flight holds it (its Work keeps a view), in which case this call
  // gets a buffer of its own. The cached buffer keeps the size of the largest request.
  at::Tensor staging(int64_t numel) {
    const bool busy = staging_.defined() && staging_.storage().use_count() > 1;
    if (busy) return at::empty({numel}, at::kFloat);
    if (!staging_.defined() || staging_.numel() < numel) staging_ = at::empty({numel}, at::kFloat);
    return staging_.narrow(0, 0, numel);
  }

  GroupPtr group_;
  at::Tensor staging_;
};

}  // namespace

std::unique_ptr<Backend> make_mpi_backend(GroupPtr group) {
  return std::make_unique<MpiBackend>(std::move(group));
}

int64_t max_mpi_count() { return g_max_count; }

int64_t set_max_mpi_count_for_testing(int64_t limit) {
  return std::exchange(g_max_count, limit > 0 ? std::min<int64_t>(limit, INT_MAX) : INT_MAX);
}

// The barrier lives with the backend that runs it; the Communicator calls it for every device.
WorkHandle mpi_barrier(const GroupPtr& group, bool async) {
  auto work = std::make_shared<MpiWork>(group, "barrier", at::Tensor());
  const MPI_Comm comm = group->comm;
  work->post(async, async ? "MPI_Ibarrier" : "MPI_Barrier",
             [&](MPI_Request* r) { return r ? MPI_Ibarrier(comm, r) : MPI_Barrier(comm); });
  work->mark_done_if_blocking(async);
  return work;
}

}  // namespace switchyard::comm::detail
