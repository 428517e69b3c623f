// The NCCL backend (CUDA tensors). Compiled only with CUDA; links the libnccl.so.2 that
// torch's wheel ships, so the process holds one NCCL (cmake/SwitchyardDependencies.cmake).
//
// Note [Stream ordering]
// Collectives run on one high-priority communication stream per group, never on the
// caller's compute stream, so that computation queued after a non-blocking collective can
// overlap it. For each call:
//   1. an event recorded on the caller's current stream is waited for by the comm stream:
//      everything the caller queued before (the kernels producing the input) comes first;
//   2. the NCCL call is queued on the comm stream;
//   3. every tensor it touches is record_stream()ed on the comm stream, so the caching
//      allocator does not hand its memory to another tensor before the transfer is done,
//      even if the caller drops it;
//   4. a completion event is recorded on the comm stream. Work::wait() makes the caller's
//      current stream wait for it (the host does not block); the blocking forms do that
//      before returning.
// The host never synchronises with the device here.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <nccl.h>

#include <string>
#include <utility>

#include "switchyard/comm/nccl_backend.h"

namespace switchyard::comm::detail {
namespace {

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kBFloat16: return ncclBfloat16;
    case at::kHalf: return ncclFloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    default: TORCH_INTERNAL_ASSERT(false, "NCCL backend: unchecked dtype ", t);
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  TORCH_INTERNAL_ASSERT(false, "NCCL backend: unknown ReduceOp");
}

int64_t row_bytes_of(const at::Tensor& t) {
  int64_t elems = 1;
  for (int64_t d = 1; d < t.dim(); ++d) elems *= t.size(d);
  return elems * static_cast<int64_t>(t.element_size());
}

// The group's NCCL communicator. Shared by the backend and its Work handles (which poll it
// for asynchronous errors).
struct NcclComm {
  ncclComm_t comm = nullptr;
  ~NcclComm() {
    if (comm == nullptr) return;
    // After MPI_Finalize we are in process teardown (Python frees objects after its atexit
    // hooks), where the CUDA context may already be gone: leave the communicator to the OS.
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) ncclCommDestroy(comm);
  }
};

[[noreturn]] void nccl_failed(const GroupInfo& group, std::string_view op, std::string_view call,
                              ncclResult_t result, ncclComm_t comm) {
  const char* last = ncclGetLastError(comm);
  std::string message = ncclGetErrorString(result);
  if (last != nullptr && *last != '\0') message += " (" + std::string(last) + ")";
  collective_failed(group, op, call, message);
}

void check_nccl(ncclResult_t result, const GroupInfo& group, std::string_view op, std::string_view call,
                ncclComm_t comm) {
  if (result != ncclSuccess) nccl_failed(group, op, call, result, comm);
}

class NcclWork final : public Work {
 public:
  NcclWork(GroupPtr group, std::shared_ptr<NcclComm> comm, const char* op, at::Tensor result,
           c10::Device device, std::vector<at::Tensor> keep)
      : Work(std::move(result)),
        group_(std::move(group)),
        comm_(std::move(comm)),
        op_(op),
        device_(device),
        keep_(std::move(keep)) {}

  void record(const c10::cuda::CUDAStream& comm_stream) { done_.record(comm_stream); }

  // Note [Stream ordering] 4. Each call orders the *current* stream, so a second wait() from
  // another stream orders that one too.
  void wait() override {
    check_async_error();
    const c10::cuda::CUDAGuard guard(device_);
    done_.block(c10::cuda::getCurrentCUDAStream(device_.index()));
    keep_.clear();  // record_stream already protects the memory
  }

  bool is_completed() override {
    check_async_error();
    return done_.query();
  }

 private:
  void check_async_error() {
    ncclResult_t state = ncclSuccess;
    check_nccl(ncclCommGetAsyncError(comm_->comm, &state), *group_, op_, "ncclCommGetAsyncError", comm_->comm);
    if (state != ncclSuccess && state != ncclInProgress) {
      nccl_failed(*group_, op_, "an asynchronous NCCL error", state, comm_->comm);
    }
  }

  GroupPtr group_;
  std::shared_ptr<NcclComm> comm_;
  const char* op_;
  c10::Device device_;
  std::vector<at::Tensor> keep_;
  at::cuda::CUDAEvent done_;
};

class NcclBackend final : public Backend {
 public:
  NcclBackend(GroupPtr group, c10::Device device)
      : group_(std::move(group)),
        device_(device),
        comm_(std::make_shared<NcclComm>()),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device.index())) {
    // Compiled against one nccl.h, running with torch's libnccl: the library must not be
    // older than the header (new API entries would be missing).
    int version = 0;
    check_nccl(ncclGetVersion(&version), *group_, "NCCL start-up", "ncclGetVersion", nullptr);
    TORCH_CHECK(version >= NCCL_VERSION_CODE, "NCCL start-up on ", group_->describe(),
                ": the loaded libnccl is version ", version, " but switchyard was compiled against nccl.h ",
                NCCL_VERSION_CODE, "; rebuild against the NCCL that torch ships");
    // Bootstrap through MPI: group rank 0 makes the id, every rank of the group joins.
    ncclUniqueId id{};
    if (group_->rank == 0) {
      check_nccl(ncclGetUniqueId(&id), *group_, "NCCL start-up", "ncclGetUniqueId", nullptr);
    }
    check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, group_->comm), *group_, "NCCL start-up",
              "MPI_Bcast of the ncclUniqueId");
    const c10::cuda::CUDAGuard guard(device_);
    check_nccl(ncclCommInitRank(&comm_->comm, group_->size, id, group_->rank), *group_, "NCCL start-up",
               "ncclCommInitRank", nullptr);
  }

  const char* name() const override { return "nccl"; }

  WorkHandle all_to_all_v(const at::Tensor& send, const at::Tensor& recv,
                          const std::vector<int64_t>& send_rows,
                          const std::vector<int64_t>& recv_rows, bool async) override {
    return grouped_send_recv("all_to_all_v", send, recv, send_rows, recv_rows, async);
  }

  // Point-to-point is the same grouped ncclSend/ncclRecv: zero-count peers get no call, so
  // only the pairs that exchange rows take part (NCCL matches each pair's calls in order).
  WorkHandle send_recv(const at::Tensor& send, const at::Tensor& recv, const std::vector<int64_t>& send_rows,
                       const std::vector<int64_t>& recv_rows, bool async) override {
    return grouped_send_recv("send_recv", send, recv, send_rows, recv_rows, async);
  }

  WorkHandle grouped_send_recv(const char* op, const at::Tensor& send, const at::Tensor& recv,
                               const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                               bool async) {
    const int64_t row_bytes = row_bytes_of(send);
    return run(op, recv, {send, recv}, async, [&](cudaStream_t stream) {
      const auto* send_ptr = static_cast<const char*>(send.data_ptr());
      auto* recv_ptr = static_cast<char*>(recv.data_ptr());
      check(ncclGroupStart(), op, "ncclGroupStart");
      int64_t send_at = 0, recv_at = 0;
      for (int p = 0; p < group_->size; ++p) {
        // Zero-row peers get no call at all: NCCL then opens no connection to them.
        if (send_rows[p] > 0) {
          check(ncclSend(send_ptr + send_at * row_bytes, static_cast<size_t>(send_rows[p] * row_bytes),
                         ncclUint8, p, comm_->comm, stream),
                op, "ncclSend");
        }
        if (recv_rows[p] > 0) {
          check(ncclRecv(recv_ptr + recv_at * row_bytes, static_cast<size_t>(recv_rows[p] * row_bytes),
                         ncclUint8, p, comm_->comm, stream),
                op, "ncclRecv");
        }
        send_at += send_rows[p];
        recv_at += recv_rows[p];
      }
      check(ncclGroupEnd(), op, "ncclGroupEnd");
    });
  }

  WorkHandle all_gather(const at::Tensor& input, const at::Tensor& output, bool async) override {
    return run("all_gather", output, {input, output}, async, [&](cudaStream_t stream) {
      const size_t bytes = static_cast<size_t>(input.numel()) * input.element_size();
      check(ncclAllGather(input.data_ptr(), output.data_ptr(), bytes, ncclUint8, comm_->comm, stream),
            "all_gather", "ncclAllGather");
    });
  }

  WorkHandle reduce_scatter(const at::Tensor& input, const at::Tensor& output, ReduceOp op,
                            bool async) override {
    return run("reduce_scatter", output, {input, output}, async, [&](cudaStream_t stream) {
      check(ncclReduceScatter(input.data_ptr(), output.data_ptr(), static_cast<size_t>(output.numel()),
                              nccl_type(input.scalar_type()), nccl_op(op), comm_->comm, stream),
            "reduce_scatter", "ncclReduceScatter");
    });
  }

  WorkHandle all_reduce(const at::Tensor& tensor, ReduceOp op, bool async) override {
    return run("all_reduce", tensor, {tensor}, async, [&](cudaStream_t stream) {
      check(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                          nccl_type(tensor.scalar_type()), nccl_op(op), comm_->comm, stream),
            "all_reduce", "ncclAllReduce");
    });
  }

  WorkHandle broadcast(const at::Tensor& tensor, int root, bool async) override {
    return run("broadcast", tensor, {tensor}, async, [&](cudaStream_t stream) {
      const size_t bytes = static_cast<size_t>(tensor.numel()) * tensor.element_size();
      check(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), bytes, ncclUint8, root, comm_->comm, stream),
            "broadcast", "ncclBroadcast");
    });
  }

 private:
  void check(ncclResult_t result, const char* op, const char* call) {
    check_nccl(result, *group_, op, call, comm_->comm);
  }

  // Note [Stream ordering], steps 1-4, around `launch(comm stream)`.
  template <typename Launch>
  WorkHandle run(const char* op, const at::Tensor& result, std::vector<at::Tensor> tensors, bool async,
                 Launch&& launch) {
    const c10::cuda::CUDAGuard guard(device_);
    const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(device_.index());
    at::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(compute);
    inputs_ready.block(stream_);
    launch(stream_.stream());
    for (const at::Tensor& t : tensors) t.record_stream(stream_);
    auto work = std::make_shared<NcclWork>(group_, comm_, op, result, device_, std::move(tensors));
    work->record(stream_);
    if (!async) work->wait();
    return work;
  }

  GroupPtr group_;
  c10::Device device_;
  std::shared_ptr<NcclComm> comm_;
  c10::cuda::CUDAStream stream_;
};

}  // namespace

std::unique_ptr<Backend> make_nccl_backend(GroupPtr group, c10::Device device) {
  TORCH_CHECK(device.is_cuda() && device.has_index(), "NCCL backend needs a CUDA device with an index, got ",
              device);
  return std::make_unique<NcclBackend>(std::move(group), device);
}

}  // namespace switchyard::comm::detail
