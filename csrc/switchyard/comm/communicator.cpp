// Communicator: argument checks, output allocation and backend choice. The transfers
// themselves are in mpi_backend.cpp and nccl_backend_cuda.cpp.
#include "switchyard/comm/communicator.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <numeric>
#include <optional>
#include <sstream>

#include "switchyard/comm/backend.h"
#include "switchyard/comm/group_info.h"
#include "switchyard/comm/mpi_backend.h"
#include "switchyard/comm/nccl_backend.h"
#include "switchyard/runtime/runtime.h"

namespace switchyard::comm {

ReduceOp parse_reduce_op(std::string_view name) {
  if (name == "sum") return ReduceOp::kSum;
  if (name == "avg") return ReduceOp::kAvg;
  if (name == "max") return ReduceOp::kMax;
  if (name == "min") return ReduceOp::kMin;
  TORCH_CHECK_VALUE(false, "unknown reduce op '", name, "': expected sum, avg, max or min");
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
  }
  return "?";
}

BackendChoice parse_backend_choice(std::string_view name) {
  if (name == "auto") return BackendChoice::kAuto;
  if (name == "mpi") return BackendChoice::kMpi;
  if (name == "nccl") return BackendChoice::kNccl;
  TORCH_CHECK_VALUE(false, "unknown communication backend '", name, "': expected auto, mpi or nccl");
}

const char* backend_choice_name(BackendChoice choice) {
  switch (choice) {
    case BackendChoice::kAuto: return "auto";
    case BackendChoice::kMpi: return "mpi";
    case BackendChoice::kNccl: return "nccl";
  }
  return "?";
}

namespace detail {

// One group's state, shared by every copy of a Communicator. The NCCL backend is created on
// the first collective on a CUDA tensor (collectively: every rank of the group makes that
// call), so CPU-only jobs never touch NCCL.
struct CommState {
  GroupPtr group;
  BackendChoice choice = BackendChoice::kAuto;
  std::unique_ptr<Backend> mpi;
  std::unique_ptr<Backend> nccl;  // declared after mpi: destroyed first
  std::optional<c10::Device> nccl_device;
};

}  // namespace detail

namespace {

using detail::Backend;
using detail::CommState;

constexpr const char* kSupportedDtypes = "float32, float64, bfloat16, float16, int64, int32, uint8";

bool supported_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: case at::kDouble: case at::kBFloat16: case at::kHalf:
    case at::kLong: case at::kInt: case at::kByte:
      return true;
    default:
      return false;
  }
}

// The shape [rows, *trailing of like] as a vector.
std::vector<int64_t> with_rows(const at::Tensor& like, int64_t rows) {
  std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
  if (shape.empty()) shape.push_back(rows);
  else shape[0] = rows;
  return shape;
}

std::string format_list(c10::IntArrayRef v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// The checks and conventions every collective shares. `op` is the operation's name.
class Checker {
 public:
  Checker(const CommState& s, const char* op) : s_(s) {
    where_ = std::string(op) + " on group '" + s.group->name + "'";
  }
  const std::string& where() const { return where_; }

  void tensor(const at::Tensor& t, const char* name) const {
    TORCH_CHECK_VALUE(t.defined(), where_, ": ", name, " is an undefined tensor");
    TORCH_CHECK_TYPE(supported_dtype(t.scalar_type()), where_, ": ", name, " has dtype ",
                     t.scalar_type(), "; supported: ", kSupportedDtypes);
    TORCH_CHECK_VALUE(t.is_cpu() || t.is_cuda(), where_, ": ", name, " is on ", t.device(),
                      "; expected a CPU (MPI) or CUDA (NCCL) tensor");
  }

  // `out` (when given) must be the tensor the collective would allocate.
  void out(const at::Tensor& out, const at::Tensor& like, c10::IntArrayRef shape,
           const char* like_name, const char* how) const {
    if (!out.defined()) return;
    tensor(out, "out");
    TORCH_CHECK_TYPE(out.scalar_type() == like.scalar_type(), where_, ": out has dtype ",
                     out.scalar_type(), " but ", like_name, " has dtype ", like.scalar_type());
    TORCH_CHECK_VALUE(out.device() == like.device(), where_, ": out is on ", out.device(), " but ",
                      like_name, " is on ", like.device());
    TORCH_CHECK_VALUE(out.sizes() == shape, where_, ": out must have shape ", shape, " (", how,
                      "), got ", out.sizes());
    TORCH_CHECK_VALUE(out.is_contiguous(), where_, ": out must be contiguous (it is written in place)");
    // MPI and NCCL read the input while writing the output: they must not share memory.
    const auto overlap = at::get_overlap_status(out, like);
    TORCH_CHECK_VALUE(overlap != at::MemOverlapStatus::Full && overlap != at::MemOverlapStatus::Partial,
                      where_, ": out shares memory with ", like_name, "; pass a separate output tensor");
  }

  void in_place(const at::Tensor& t) const {
    tensor(t, "tensor");
    TORCH_CHECK_VALUE(t.is_contiguous(), where_, ": tensor of shape ", t.sizes(),
                      " must be contiguous (the result is written into it in place)");
  }

  void reduce_op(ReduceOp op, const at::Tensor& t, const char* name) const {
    TORCH_CHECK_VALUE(op != ReduceOp::kAvg || at::isFloatingType(t.scalar_type()), where_,
                      ": op avg needs a floating-point tensor, but ", name, " has dtype ",
                      t.scalar_type(), "; use sum and divide");
  }

  void splits(c10::IntArrayRef splits, const char* name) const {
    TORCH_CHECK_VALUE(static_cast<int64_t>(splits.size()) == s_.group->size, where_, ": ", name,
                      " must have ", s_.group->size, " entries (one per rank of the group), got ",
                      splits.size(), ": ", format_list(splits));
    for (size_t p = 0; p < splits.size(); ++p) {
      TORCH_CHECK_VALUE(splits[p] >= 0, where_, ": ", name, "[", p, "] = ", splits[p],
                        " is negative: ", format_list(splits));
    }
  }

 private:
  const CommState& s_;
  std::string where_;
};

int64_t sum_of(c10::IntArrayRef v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

at::Tensor output_or_new(const at::Tensor& out, const at::Tensor& like, c10::IntArrayRef shape) {
  return out.defined() ? out : at::empty(shape, like.options());
}

// The backend for tensors on `device` (Note [Who may call] for the choice).
Backend& backend_for(CommState& s, const Checker& c, const at::Tensor& t, const char* name) {
  const std::string choice = backend_choice_name(s.choice);
  if (t.is_cpu()) {
    TORCH_CHECK_VALUE(s.choice != BackendChoice::kNccl, c.where(), ": ", name,
                      " is a CPU tensor, but the backend is pinned to nccl (parallel.backend), "
                      "which moves CUDA tensors only");
    return *s.mpi;
  }
  TORCH_CHECK_VALUE(s.choice != BackendChoice::kMpi, c.where(), ": ", name, " is on ", t.device(),
                    ", but the backend is pinned to mpi (parallel.backend), which moves CPU tensors "
                    "only (CUDA-aware MPI is not used)");
#ifdef SWITCHYARD_WITH_CUDA
  if (!s.nccl) {
    s.nccl = detail::make_nccl_backend(s.group, t.device());
    s.nccl_device = t.device();
  }
  TORCH_CHECK_VALUE(t.device() == *s.nccl_device, c.where(), ": ", name, " is on ", t.device(),
                    ", but this group's NCCL communicator was created on ", *s.nccl_device,
                    " (one device per rank)");
  return *s.nccl;
#else
  TORCH_CHECK_VALUE(false, c.where(), ": ", name, " is on ", t.device(),
                    ", but switchyard was built without CUDA, so there is no NCCL backend");
#endif
}

}  // namespace

Communicator::Communicator(std::shared_ptr<detail::CommState> state) : state_(std::move(state)) {}

Communicator Communicator::world() {
  TORCH_CHECK(runtime::is_initialized(),
              "Communicator::world(): the runtime is not initialised; call "
              "switchyard::runtime::init() (Python: switchyard.init()) first");
  MPI_Comm comm = MPI_COMM_NULL;
  const int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  TORCH_CHECK(rc == MPI_SUCCESS, "Communicator::world(): MPI_Comm_dup failed: ", detail::mpi_error_string(rc));
  auto state = std::make_shared<CommState>();
  state->group = detail::make_group(comm, "world");
  state->mpi = detail::make_mpi_backend(state->group);
  return Communicator(std::move(state));
}

Communicator Communicator::split(int color, int key, std::string name) const {
  TORCH_CHECK_VALUE(color >= 0, "Communicator::split of ", describe(), " into '", name,
                    "': color must be >= 0, got ", color);
  MPI_Comm comm = MPI_COMM_NULL;
  detail::check_mpi(MPI_Comm_split(state_->group->comm, color, key, &comm), *state_->group,
                    "split into '" + name + "'", "MPI_Comm_split");
  auto state = std::make_shared<CommState>();
  state->group = detail::make_group(comm, std::move(name));
  state->choice = state_->choice;
  state->mpi = detail::make_mpi_backend(state->group);
  return Communicator(std::move(state));
}

int Communicator::rank() const { return state_->group->rank; }
int Communicator::size() const { return state_->group->size; }
const std::string& Communicator::name() const { return state_->group->name; }
const std::vector<int>& Communicator::world_ranks() const { return state_->group->world_ranks; }
BackendChoice Communicator::backend_choice() const { return state_->choice; }
void Communicator::set_backend_choice(BackendChoice choice) { state_->choice = choice; }
std::string Communicator::describe() const { return state_->group->describe(); }

// Each collective is one function taking `async`; the public blocking form returns the
// result of the already complete (MPI) or stream-ordered (NCCL) Work.

namespace {

// all_to_all_v (collective) and send_recv (point-to-point) share their checks and layout.
WorkHandle run_exchange(CommState& s, const char* op, bool pairwise, const at::Tensor& send,
                        c10::IntArrayRef send_splits, c10::IntArrayRef recv_splits, const at::Tensor& out,
                        bool async) {
  const Checker c(s, op);
  c.tensor(send, "send");
  TORCH_CHECK_VALUE(send.dim() >= 1, c.where(), ": send must have a row dimension, got a 0-dim tensor");
  c.splits(send_splits, "send_splits");
  c.splits(recv_splits, "recv_splits");
  TORCH_CHECK_VALUE(sum_of(send_splits) == send.size(0), c.where(), ": send_splits ",
                    format_list(send_splits), " sum to ", sum_of(send_splits), " rows, but send has ",
                    send.size(0), " rows (shape ", send.sizes(), ")");
  const auto shape = with_rows(send, sum_of(recv_splits));
  c.out(out, send, shape, "send", "sum(recv_splits) rows, send's trailing shape");
  Backend& backend = backend_for(s, c, send, "send");
  if (pairwise) {
    return backend.send_recv(send.contiguous(), output_or_new(out, send, shape), send_splits.vec(),
                             recv_splits.vec(), async);
  }
  return backend.all_to_all_v(send.contiguous(), output_or_new(out, send, shape), send_splits.vec(),
                              recv_splits.vec(), async);
}

WorkHandle run_all_gather(CommState& s, const at::Tensor& input, const at::Tensor& out, bool async) {
  const Checker c(s, "all_gather");
  c.tensor(input, "input");
  const int64_t n = input.dim() == 0 ? 1 : input.size(0);
  const auto shape = with_rows(input, s.group->size * n);
  c.out(out, input, shape, "input", "group size * input rows, input's trailing shape");
  Backend& backend = backend_for(s, c, input, "input");
  return backend.all_gather(input.contiguous(), output_or_new(out, input, shape), async);
}

WorkHandle run_reduce_scatter(CommState& s, const at::Tensor& input, ReduceOp op, const at::Tensor& out,
                              bool async) {
  const Checker c(s, "reduce_scatter");
  c.tensor(input, "input");
  const int size = s.group->size;
  TORCH_CHECK_VALUE(input.dim() >= 1 && input.size(0) % size == 0, c.where(), ": input of shape ",
                    input.sizes(), " must have a row count divisible by the group size ", size);
  c.reduce_op(op, input, "input");
  const auto shape = with_rows(input, input.size(0) / size);
  c.out(out, input, shape, "input", "input rows / group size, input's trailing shape");
  Backend& backend = backend_for(s, c, input, "input");
  return backend.reduce_scatter(input.contiguous(), output_or_new(out, input, shape), op, async);
}

WorkHandle run_all_reduce(CommState& s, const at::Tensor& tensor, ReduceOp op, bool async) {
  const Checker c(s, "all_reduce");
  c.in_place(tensor);
  c.reduce_op(op, tensor, "tensor");
  return backend_for(s, c, tensor, "tensor").all_reduce(tensor, op, async);
}

WorkHandle run_broadcast(CommState& s, const at::Tensor& tensor, int root, bool async) {
  const Checker c(s, "broadcast");
  c.in_place(tensor);
  TORCH_CHECK_VALUE(root >= 0 && root < s.group->size, c.where(), ": root must be a rank of the group, in [0, ",
                    s.group->size, "), got ", root);
  return backend_for(s, c, tensor, "tensor").broadcast(tensor, root, async);
}

}  // namespace

at::Tensor Communicator::all_to_all_v(const at::Tensor& send, c10::IntArrayRef send_splits,
                                      c10::IntArrayRef recv_splits, const at::Tensor& out) {
  return run_exchange(*state_, "all_to_all_v", false, send, send_splits, recv_splits, out, false)->result();
}
WorkHandle Communicator::all_to_all_v_async(const at::Tensor& send, c10::IntArrayRef send_splits,
                                            c10::IntArrayRef recv_splits, const at::Tensor& out) {
  return run_exchange(*state_, "all_to_all_v", false, send, send_splits, recv_splits, out, true);
}

at::Tensor Communicator::send_recv(const at::Tensor& send, c10::IntArrayRef send_splits,
                                   c10::IntArrayRef recv_splits, const at::Tensor& out) {
  return run_exchange(*state_, "send_recv", true, send, send_splits, recv_splits, out, false)->result();
}
WorkHandle Communicator::send_recv_async(const at::Tensor& send, c10::IntArrayRef send_splits,
                                         c10::IntArrayRef recv_splits, const at::Tensor& out) {
  return run_exchange(*state_, "send_recv", true, send, send_splits, recv_splits, out, true);
}

at::Tensor Communicator::all_gather(const at::Tensor& input, const at::Tensor& out) {
  return run_all_gather(*state_, input, out, false)->result();
}
WorkHandle Communicator::all_gather_async(const at::Tensor& input, const at::Tensor& out) {
  return run_all_gather(*state_, input, out, true);
}

at::Tensor Communicator::reduce_scatter(const at::Tensor& input, ReduceOp op, const at::Tensor& out) {
  return run_reduce_scatter(*state_, input, op, out, false)->result();
}
WorkHandle Communicator::reduce_scatter_async(const at::Tensor& input, ReduceOp op, const at::Tensor& out) {
  return run_reduce_scatter(*state_, input, op, out, true);
}

void Communicator::all_reduce(const at::Tensor& tensor, ReduceOp op) {
  run_all_reduce(*state_, tensor, op, false);
}
WorkHandle Communicator::all_reduce_async(const at::Tensor& tensor, ReduceOp op) {
  return run_all_reduce(*state_, tensor, op, true);
}

void Communicator::broadcast(const at::Tensor& tensor, int root) { run_broadcast(*state_, tensor, root, false); }
WorkHandle Communicator::broadcast_async(const at::Tensor& tensor, int root) {
  return run_broadcast(*state_, tensor, root, true);
}

void Communicator::barrier() { detail::mpi_barrier(state_->group, false); }
WorkHandle Communicator::barrier_async() { return detail::mpi_barrier(state_->group, true); }

}  // namespace switchyard::comm
