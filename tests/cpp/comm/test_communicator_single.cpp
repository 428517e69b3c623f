// The Communicator in a plain process (an MPI singleton: a world of one), on the CPU and --
// where a GPU is visible -- through NCCL, whose single-rank paths are all one GPU can run
// (NCCL allows one rank of a communicator per device). Each case is its own process
// (CTest runs discovered cases one by one), so each initialises and finalises MPI.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "switchyard/comm/communicator.h"
#include "switchyard/runtime/device.h"
#include "switchyard/runtime/runtime.h"

namespace sc = switchyard::comm;
namespace sr = switchyard::runtime;
using sc::Communicator;
using sc::ReduceOp;

namespace {

// Every collective on a world of one: the result equals the input (avg of one is itself).
void check_world_of_one(Communicator& w, const c10::Device& device) {
  EXPECT_EQ(w.size(), 1);
  EXPECT_EQ(w.rank(), 0);
  const auto opts = torch::TensorOptions().device(device);
  for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16, torch::kHalf, torch::kLong,
                           torch::kInt, torch::kByte}) {
    const at::Tensor x = torch::arange(12, opts.dtype(torch::kDouble)).reshape({4, 3}).to(dtype);
    EXPECT_TRUE(torch::equal(w.all_to_all_v(x, {4}, {4}), x)) << dtype;
    EXPECT_TRUE(torch::equal(w.all_gather(x), x)) << dtype;
    EXPECT_TRUE(torch::equal(w.reduce_scatter(x, ReduceOp::kMax), x)) << dtype;
    at::Tensor y = x.clone();
    w.all_reduce(y, at::isFloatingType(dtype) ? ReduceOp::kAvg : ReduceOp::kSum);
    EXPECT_TRUE(torch::equal(y, x)) << dtype;
    w.broadcast(y, 0);
    EXPECT_TRUE(torch::equal(y, x)) << dtype;
  }
  // Non-blocking, with the input produced just before on the current stream, and the
  // input dropped before wait() (the handle keeps it alive).
  at::Tensor big = torch::randn({512, 512}, opts);
  for (int i = 0; i < 3; ++i) big = big.matmul(big) / 512;
  const at::Tensor expected = big.clone();
  auto work = w.all_to_all_v_async(big.clone(), {512}, {512});
  work->wait();
  EXPECT_TRUE(torch::equal(work->result(), expected));
  auto sum = w.all_reduce_async(big, ReduceOp::kSum);
  sum->wait();
  EXPECT_TRUE(torch::equal(big, expected));
  if (device.is_cuda()) torch::cuda::synchronize();
  EXPECT_TRUE(work->is_completed());
  EXPECT_TRUE(sum->is_completed());
  w.barrier();
}

}  // namespace

TEST(CommunicatorSingle, WorldOfOneOnCpu) {
  sr::init();
  {
    Communicator w = Communicator::world();
    check_world_of_one(w, c10::Device(c10::kCPU));
  }
  sr::finalize();
}

TEST(CommunicatorSingle, WorldOfOneOnGpuThroughNccl) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU visible";
  sr::init();
  {
    const c10::Device device = sr::select_device();
    Communicator w = Communicator::world();
    check_world_of_one(w, device);
    // A group pinned to MPI refuses CUDA tensors; CPU tensors still go through MPI.
    w.set_backend_choice(sc::BackendChoice::kMpi);
    EXPECT_THROW(w.all_reduce(torch::ones({2}, torch::TensorOptions().device(device))), c10::Error);
    w.set_backend_choice(sc::BackendChoice::kAuto);
    at::Tensor cpu = torch::ones({2});
    w.all_reduce(cpu);
    EXPECT_TRUE(torch::equal(cpu, torch::ones({2})));
  }
  sr::finalize();
}
