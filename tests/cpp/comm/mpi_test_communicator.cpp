// Runs under `mpirun -np 2`: every collective of the Communicator on CPU tensors (MPI
// backend), every dtype, blocking and non-blocking, the out= forms, argument errors, and
// the paths for counts beyond MPI's int (with the limit lowered). Each rank checks its
// result against values computed locally from the known inputs of every rank.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <climits>
#include <vector>

#include "comm_test_util.h"
#include "switchyard/comm/communicator.h"
#include "switchyard/comm/mpi_backend.h"

namespace sc = switchyard::comm;
namespace st = switchyard::comm::testing;
using sc::Communicator;
using sc::ReduceOp;

namespace {

Communicator& world() {
  static Communicator w = Communicator::world();
  return w;
}

// Rows src sends to dst: zero for some pairs (0 -> 1), uneven for the others.
int64_t rows_between(int src, int dst) { return (src + 2 * dst + 1) % 3; }

struct Exchange {
  at::Tensor send;
  std::vector<int64_t> send_splits, recv_splits;
  at::Tensor expected;
};

Exchange make_exchange(const Communicator& c, at::IntArrayRef trailing, at::ScalarType dtype) {
  Exchange e;
  std::vector<at::Tensor> out, in;
  for (int p = 0; p < c.size(); ++p) {
    e.send_splits.push_back(rows_between(c.rank(), p));
    e.recv_splits.push_back(rows_between(p, c.rank()));
    out.push_back(st::block(c.rank(), p, e.send_splits.back(), trailing, dtype));
    in.push_back(st::block(p, c.rank(), e.recv_splits.back(), trailing, dtype));
  }
  e.send = st::rows_cat(out, trailing, dtype);
  e.expected = st::rows_cat(in, trailing, dtype);
  return e;
}

// The reduction over ranks of rank_values(rank, shape), computed locally in float64.
at::Tensor reduced(int size, at::IntArrayRef shape, ReduceOp op) {
  at::Tensor acc = st::rank_values(0, shape, at::kDouble);
  for (int r = 1; r < size; ++r) {
    const at::Tensor v = st::rank_values(r, shape, at::kDouble);
    if (op == ReduceOp::kMax) acc = at::maximum(acc, v);
    else if (op == ReduceOp::kMin) acc = at::minimum(acc, v);
    else acc = acc + v;
  }
  return op == ReduceOp::kAvg ? acc / size : acc;
}

}  // namespace

TEST(Communicator, WorldKnowsItsRanks) {
  Communicator& w = world();
  EXPECT_EQ(w.size(), 2);
  EXPECT_EQ(w.rank(), switchyard::runtime::process_info().rank);
  EXPECT_EQ(w.name(), "world");
  EXPECT_EQ(w.world_ranks(), (std::vector<int>{0, 1}));
  EXPECT_NE(w.describe().find("group 'world' (rank " + std::to_string(w.rank()) + " of 2"), std::string::npos);
}

TEST(Communicator, AllToAllVEveryDtypeAndShape) {
  for (const auto dtype : st::all_dtypes()) {
    for (const std::vector<int64_t>& trailing : {std::vector<int64_t>{}, {3}, {2, 4}}) {
      const Exchange e = make_exchange(world(), trailing, dtype);
      const at::Tensor got = world().all_to_all_v(e.send, e.send_splits, e.recv_splits);
      EXPECT_EQ(got.scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(got, e.expected)) << dtype << " trailing " << at::IntArrayRef(trailing);
    }
  }
}

TEST(Communicator, AllToAllVIntoOutAndFromAView) {
  const Exchange e = make_exchange(world(), {5}, at::kFloat);
  at::Tensor out = torch::full(e.expected.sizes(), -1.0f);
  const at::Tensor got = world().all_to_all_v(e.send, e.send_splits, e.recv_splits, out);
  EXPECT_TRUE(got.is_same(out));
  EXPECT_TRUE(torch::equal(out, e.expected));
  // A non-contiguous send (every other column of a wider tensor) moves the same rows.
  // (No ASSERT before a collective: a rank leaving early would strand its peer.)
  const at::Tensor view = torch::stack({e.send, -e.send}, 2).select(2, 0);
  EXPECT_FALSE(view.is_contiguous());
  EXPECT_TRUE(torch::equal(world().all_to_all_v(view, e.send_splits, e.recv_splits), e.expected));
}

TEST(Communicator, AllToAllVNothingToSend) {
  const at::Tensor send = torch::empty({0, 3});
  const at::Tensor got = world().all_to_all_v(send, {0, 0}, {0, 0});
  EXPECT_EQ(got.sizes(), (std::vector<int64_t>{0, 3}));
}

TEST(Communicator, AllGatherEveryDtype) {
  const int size = world().size();
  for (const auto dtype : st::all_dtypes()) {
    const at::Tensor mine = st::rank_values(world().rank(), {3, 2}, dtype);
    std::vector<at::Tensor> all;
    for (int r = 0; r < size; ++r) all.push_back(st::rank_values(r, {3, 2}, dtype));
    EXPECT_TRUE(torch::equal(world().all_gather(mine), torch::cat(all))) << dtype;
  }
  // A 0-dim tensor gathers into [size].
  const at::Tensor scalar = torch::tensor(static_cast<double>(world().rank() + 10));
  EXPECT_TRUE(torch::equal(world().all_gather(scalar), torch::tensor({10.0, 11.0}, torch::kDouble)));
}

TEST(Communicator, ReduceScatterEveryOpAndDtype) {
  const int size = world().size();
  for (const auto dtype : st::all_dtypes()) {
    for (const auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
      if (op == ReduceOp::kAvg && !at::isFloatingType(dtype)) continue;
      const at::Tensor input = st::rank_values(world().rank(), {size * 3, 2}, dtype);
      const at::Tensor expected =
          reduced(size, {size * 3, 2}, op).slice(0, world().rank() * 3, (world().rank() + 1) * 3).to(dtype);
      const at::Tensor got = world().reduce_scatter(input, op);
      EXPECT_EQ(got.sizes(), (std::vector<int64_t>{3, 2}));
      EXPECT_TRUE(torch::equal(got, expected)) << dtype << " " << sc::reduce_op_name(op);
    }
  }
}

TEST(Communicator, AllReduceEveryOpAndDtype) {
  for (const auto dtype : st::all_dtypes()) {
    for (const auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
      if (op == ReduceOp::kAvg && !at::isFloatingType(dtype)) continue;
      at::Tensor t = st::rank_values(world().rank(), {4, 3}, dtype);
      world().all_reduce(t, op);
      EXPECT_TRUE(torch::equal(t, reduced(world().size(), {4, 3}, op).to(dtype)))
          << dtype << " " << sc::reduce_op_name(op);
    }
  }
}

TEST(Communicator, BroadcastFromEveryRoot) {
  for (int root = 0; root < world().size(); ++root) {
    for (const auto dtype : st::all_dtypes()) {
      at::Tensor t = world().rank() == root ? st::rank_values(root, {2, 5}, dtype) : torch::zeros({2, 5}, dtype);
      world().broadcast(t, root);
      EXPECT_TRUE(torch::equal(t, st::rank_values(root, {2, 5}, dtype))) << "root " << root << " " << dtype;
    }
  }
}

TEST(Communicator, NonBlockingFormsOverlapAndComplete) {
  const Exchange e = make_exchange(world(), {64}, at::kFloat);
  at::Tensor reduce_me = st::rank_values(world().rank(), {128}, at::kDouble);
  const at::Tensor gather_me = st::rank_values(world().rank(), {2, 2}, at::kInt);
  at::Tensor bcast = world().rank() == 1 ? torch::arange(6, torch::kLong) : torch::zeros({6}, torch::kLong);

  // Several collectives in flight at once, local work in between, waited out of order.
  auto a2a = world().all_to_all_v_async(e.send, e.send_splits, e.recv_splits);
  auto ar = world().all_reduce_async(reduce_me, ReduceOp::kSum);
  auto ag = world().all_gather_async(gather_me);
  auto bc = world().broadcast_async(bcast, 1);
  auto rs = world().reduce_scatter_async(st::rank_values(world().rank(), {4, 2}, at::kBFloat16), ReduceOp::kAvg);
  auto bar = world().barrier_async();
  const at::Tensor local = torch::randn({256, 256}).matmul(torch::randn({256, 256}));  // overlapped work
  EXPECT_EQ(local.size(0), 256);

  bar->wait();
  rs->wait();
  bc->wait();
  ag->wait();
  ar->wait();
  a2a->wait();
  for (const auto& w : {a2a, ar, ag, bc, rs, bar}) EXPECT_TRUE(w->is_completed());
  a2a->wait();  // idempotent

  EXPECT_TRUE(torch::equal(a2a->result(), e.expected));
  EXPECT_TRUE(ar->result().is_same(reduce_me));
  EXPECT_TRUE(torch::equal(reduce_me, reduced(2, {128}, ReduceOp::kSum)));
  EXPECT_TRUE(torch::equal(ag->result(), torch::cat({st::rank_values(0, {2, 2}, at::kInt),
                                                     st::rank_values(1, {2, 2}, at::kInt)})));
  EXPECT_TRUE(torch::equal(bcast, torch::arange(6, torch::kLong)));
  EXPECT_TRUE(torch::equal(rs->result(), reduced(2, {4, 2}, ReduceOp::kAvg)
                                             .slice(0, world().rank() * 2, world().rank() * 2 + 2)
                                             .to(at::kBFloat16)));
  EXPECT_FALSE(bar->result().defined());
}

// Note [Staging buffer reuse]: 16-bit reductions in flight together each get their own
// float32 buffer; later ones reuse the cached one.
TEST(Communicator, StagedReductionsInFlightTogether) {
  const int r = world().rank();
  std::vector<at::Tensor> tensors;
  std::vector<sc::WorkHandle> works;
  for (int i = 0; i < 3; ++i) {
    tensors.push_back(st::rank_values(r + i, {64 + i}, i == 1 ? at::kHalf : at::kBFloat16));
    works.push_back(world().all_reduce_async(tensors.back(), ReduceOp::kSum));
  }
  auto rs = world().reduce_scatter_async(st::rank_values(r, {4, 3}, at::kBFloat16), ReduceOp::kSum);
  for (auto it = works.rbegin(); it != works.rend(); ++it) (*it)->wait();
  rs->wait();
  for (int i = 0; i < 3; ++i) {
    const at::Tensor expected = st::rank_values(i, {64 + i}, at::kDouble) + st::rank_values(1 + i, {64 + i}, at::kDouble);
    EXPECT_TRUE(torch::equal(tensors[i], expected.to(tensors[i].scalar_type()))) << i;
  }
  EXPECT_TRUE(torch::equal(rs->result(), reduced(2, {4, 3}, ReduceOp::kSum).slice(0, 2 * r, 2 * r + 2).to(at::kBFloat16)));
  // Sequential calls of growing and shrinking sizes through the cached buffer.
  for (const int64_t n : {10, 1000, 3, 1000}) {
    at::Tensor t = st::rank_values(r, {n}, at::kBFloat16);
    world().all_reduce(t, ReduceOp::kAvg);
    EXPECT_TRUE(torch::equal(t, reduced(2, {n}, ReduceOp::kAvg).to(at::kBFloat16))) << n;
  }
}

TEST(Communicator, PollingUntilComplete) {
  at::Tensor t = torch::ones({1000});
  auto w = world().all_reduce_async(t);
  while (!w->is_completed()) {
  }
  EXPECT_TRUE(torch::equal(t, torch::full({1000}, 2.0f)));
}

TEST(Communicator, DroppedHandleStillCompletes) {
  // A handle dropped without wait() waits in its destructor: the buffers stay valid.
  at::Tensor t = torch::ones({10});
  world().all_reduce_async(t, ReduceOp::kMax);
  world().barrier();
  EXPECT_TRUE(torch::equal(t, torch::ones({10})));
}

TEST(Communicator, ArgumentErrorsNameTheTensorAndShapes) {
  Communicator& w = world();
  const at::Tensor x = torch::zeros({3, 4});
  st::expect_error([&] { w.all_to_all_v(x, {1, 1, 1}, {1, 1}); },
                   {"all_to_all_v on group 'world'", "send_splits must have 2 entries", "got 3"});
  st::expect_error([&] { w.all_to_all_v(x, {1, 1}, {1, 1}); },
                   {"send_splits [1, 1] sum to 2 rows, but send has 3 rows (shape [3, 4])"});
  st::expect_error([&] { w.all_to_all_v(x, {2, 1}, {1, -1}); }, {"recv_splits[1] = -1 is negative"});
  st::expect_error([&] { w.all_to_all_v(torch::zeros({}), {0, 0}, {0, 0}); }, {"send must have a row dimension"});
  st::expect_error([&] { w.all_to_all_v(x, {2, 1}, {1, 1}, torch::zeros({2, 5})); },
                   {"out must have shape [2, 4]", "got [2, 5]"});
  st::expect_error([&] { w.all_to_all_v(x, {2, 1}, {1, 1}, torch::zeros({2, 4}, torch::kDouble)); },
                   {"out has dtype Double but send has dtype Float"});
  st::expect_error([&] { w.all_to_all_v(x, {2, 1}, {2, 1}, x); }, {"out shares memory with send"});
  st::expect_error([&] { w.all_to_all_v(x.to(torch::kBool), {2, 1}, {1, 1}); },
                   {"send has dtype Bool; supported: float32"});
  st::expect_error([&] { w.all_gather(x, torch::zeros({6, 3})); }, {"all_gather", "out must have shape [6, 4]"});
  st::expect_error([&] { w.reduce_scatter(torch::zeros({3, 2})); },
                   {"reduce_scatter on group 'world': input of shape [3, 2]", "divisible by the group size 2"});
  st::expect_error([&] { w.reduce_scatter(torch::zeros({4}, torch::kLong), ReduceOp::kAvg); },
                   {"op avg needs a floating-point tensor", "Long"});
  st::expect_error([&] { w.all_reduce(x.t()); }, {"all_reduce", "must be contiguous"});
  st::expect_error([&] { w.broadcast(x, 2); }, {"broadcast", "root must be a rank of the group, in [0, 2), got 2"});
  st::expect_error([&] { w.all_reduce(torch::zeros({2}, torch::kMeta)); }, {"tensor is on meta"});
  st::expect_error([] { sc::parse_reduce_op("mean"); }, {"unknown reduce op 'mean'"});

  // A pinned backend rejects the other device's tensors.
  Communicator pinned = w.split(0, w.rank(), "pinned");
  pinned.set_backend_choice(sc::BackendChoice::kNccl);
  st::expect_error([&] { pinned.all_reduce(torch::zeros({2})); },
                   {"all_reduce on group 'pinned'", "CPU tensor", "pinned to nccl"});

  // Nothing was sent: the group still works.
  at::Tensor t = torch::ones({2});
  w.all_reduce(t);
  EXPECT_TRUE(torch::equal(t, torch::full({2}, 2.0f)));
}

TEST(Communicator, SplitMakesIndependentGroups) {
  Communicator& w = world();
  // Each rank alone.
  Communicator self = w.split(w.rank(), 0, "self");
  EXPECT_EQ(self.size(), 1);
  EXPECT_EQ(self.rank(), 0);
  EXPECT_EQ(self.world_ranks(), std::vector<int>{w.rank()});
  const at::Tensor x = torch::arange(6, torch::kFloat).reshape({3, 2});
  EXPECT_TRUE(torch::equal(self.all_to_all_v(x, {3}, {3}), x));
  // Reversed order by key.
  Communicator rev = w.split(0, -w.rank(), "reversed");
  EXPECT_EQ(rev.rank(), 1 - w.rank());
  EXPECT_EQ(rev.world_ranks(), (std::vector<int>{1, 0}));
}

// Note [MPI counts are int]: with the limit lowered to 7 the chunked, row-typed and
// rejected paths run on small tensors.
TEST(Communicator, CountsBeyondTheMpiLimit) {
  namespace d = switchyard::comm::detail;
  const int64_t previous = d::set_max_mpi_count_for_testing(7);
  // all_reduce and broadcast split into calls of at most 7 elements / bytes.
  at::Tensor t = st::rank_values(world().rank(), {100}, at::kFloat);
  world().all_reduce(t);
  EXPECT_TRUE(torch::equal(t, reduced(2, {100}, ReduceOp::kSum).to(at::kFloat)));
  at::Tensor h = st::rank_values(world().rank(), {33}, at::kHalf);
  auto w = world().all_reduce_async(h, ReduceOp::kAvg);
  w->wait();
  EXPECT_TRUE(torch::equal(h, reduced(2, {33}, ReduceOp::kAvg).to(at::kHalf)));
  at::Tensor b = world().rank() == 0 ? torch::arange(50, torch::kLong) : torch::zeros({50}, torch::kLong);
  world().broadcast(b, 0);
  EXPECT_TRUE(torch::equal(b, torch::arange(50, torch::kLong)));
  // all_to_all_v and all_gather count in rows of 6 bytes (fewer than 7 rows per message).
  const Exchange e = make_exchange(world(), {3}, at::kHalf);
  EXPECT_TRUE(torch::equal(world().all_to_all_v(e.send, e.send_splits, e.recv_splits), e.expected));
  const at::Tensor g = st::rank_values(world().rank(), {3, 3}, at::kByte);
  EXPECT_TRUE(torch::equal(world().all_gather(g), torch::cat({st::rank_values(0, {3, 3}, at::kByte),
                                                              st::rank_values(1, {3, 3}, at::kByte)})));
  // Beyond what rows can describe: a clear rejection, before anything is sent.
  st::expect_error([&] { world().all_to_all_v(torch::zeros({8, 1}), {4, 4}, {4, 4}); },
                   {"all_to_all_v (MPI backend)", "8 rows of 4 bytes", "at most 7 rows"});
  st::expect_error([&] { world().reduce_scatter(torch::zeros({2, 8})); },
                   {"reduce_scatter (MPI backend)", "8 elements", "(7)"});
  d::set_max_mpi_count_for_testing(previous);
  EXPECT_EQ(d::max_mpi_count(), INT_MAX);
}

int main(int argc, char** argv) { return st::run_all_tests_on_every_rank(argc, argv); }
