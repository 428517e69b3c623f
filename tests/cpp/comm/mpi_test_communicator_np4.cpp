// Runs under `mpirun -np 4`: the process groups of expert_parallel = 2 x data_parallel = 2,
// uneven all_to_all_v splits with zero rows to and from some peers (on the world and on the
// expert-parallel group), collectives on every group, several groups' collectives in
// flight at once, bfloat16 sums rounded once, and argument errors naming the group.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "comm_test_util.h"
#include "switchyard/comm/communicator.h"
#include "switchyard/comm/process_groups.h"
#include "switchyard/common/error.h"
#include "switchyard/config/config.h"

namespace sc = switchyard::comm;
namespace st = switchyard::comm::testing;
using sc::Communicator;
using sc::ProcessGroups;
using sc::ReduceOp;

namespace {

Communicator& world() {
  static Communicator w = Communicator::world();
  return w;
}

switchyard::config::Config parallel_config(int64_t ep, int64_t dp) {
  switchyard::config::Config c;
  c.parallel.expert_parallel = ep;
  c.parallel.data_parallel = dp;
  return c;
}

ProcessGroups& groups() {
  static ProcessGroups g = ProcessGroups::create(parallel_config(2, 0), world());
  return g;
}

// Rows world rank src sends to world rank dst: 0 for a quarter of the pairs (including
// some rank to itself), up to 3 otherwise.
int64_t rows_between(int src, int dst) { return (src * 3 + dst * 2) % 4; }

// An all_to_all_v on `c` whose row counts and values come from the members' world ranks.
void check_all_to_all_v(Communicator& c, at::IntArrayRef trailing, at::ScalarType dtype, bool async) {
  const auto& members = c.world_ranks();
  const int me = members[c.rank()];
  std::vector<int64_t> send_splits, recv_splits;
  std::vector<at::Tensor> out, in;
  for (int p = 0; p < c.size(); ++p) {
    send_splits.push_back(rows_between(me, members[p]));
    recv_splits.push_back(rows_between(members[p], me));
    out.push_back(st::block(me, members[p], send_splits.back(), trailing, dtype));
    in.push_back(st::block(members[p], me, recv_splits.back(), trailing, dtype));
  }
  const at::Tensor send = st::rows_cat(out, trailing, dtype);
  const at::Tensor expected = st::rows_cat(in, trailing, dtype);
  at::Tensor got;
  if (async) {
    auto w = c.all_to_all_v_async(send, send_splits, recv_splits);
    w->wait();
    got = w->result();
  } else {
    got = c.all_to_all_v(send, send_splits, recv_splits);
  }
  EXPECT_TRUE(torch::equal(got, expected)) << c.describe() << " " << dtype;
}

}  // namespace

TEST(ProcessGroups, ExpertTimesDataParallelLayout) {
  const ProcessGroups& g = groups();
  const int r = world().rank();
  EXPECT_EQ(g.expert_parallel_size, 2);
  EXPECT_EQ(g.data_parallel_size, 2);
  EXPECT_EQ(g.expert_parallel.name(), "expert_parallel");
  EXPECT_EQ(g.expert_parallel.world_ranks(), (std::vector<int>{r / 2 * 2, r / 2 * 2 + 1}));
  EXPECT_EQ(g.expert_parallel.rank(), r % 2);
  EXPECT_EQ(g.expert_data_parallel.name(), "expert_data_parallel");
  EXPECT_EQ(g.expert_data_parallel.world_ranks(), (std::vector<int>{r % 2, r % 2 + 2}));
  EXPECT_EQ(g.expert_data_parallel.rank(), r / 2);
  EXPECT_EQ(g.data_parallel.name(), "data_parallel");
  EXPECT_EQ(g.data_parallel.world_ranks(), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(g.data_parallel.rank(), r);
  EXPECT_EQ(g.world.size(), 4);
}

TEST(ProcessGroups, OtherFactorisations) {
  const ProcessGroups all_ep = ProcessGroups::create(parallel_config(4, 1), world());
  EXPECT_EQ(all_ep.expert_parallel.size(), 4);
  EXPECT_EQ(all_ep.expert_data_parallel.size(), 1);
  const ProcessGroups all_dp = ProcessGroups::create(parallel_config(1, 0), world());
  EXPECT_EQ(all_dp.expert_parallel.size(), 1);
  EXPECT_EQ(all_dp.expert_data_parallel.size(), 4);
  auto pinned = parallel_config(2, 2);
  pinned.parallel.backend = "mpi";
  EXPECT_EQ(ProcessGroups::create(pinned, world()).expert_parallel.backend_choice(), sc::BackendChoice::kMpi);
}

TEST(ProcessGroups, ConfigThatDoesNotFitTheWorldIsRejected) {
  auto expect_config_error = [](const switchyard::config::Config& c, const std::string& part) {
    try {
      ProcessGroups::create(c, world());
      ADD_FAILURE() << "expected an error containing " << part;
    } catch (const switchyard::Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  auto three = parallel_config(3, 0);
  three.moe.num_experts = 9;
  expect_config_error(three, "world size 4 is not a multiple of expert_parallel 3");
  expect_config_error(parallel_config(2, 1), "(2) * parallel.data_parallel (1) = 2 must equal the world size 4");
}

TEST(Communicator, AllToAllVUnevenWithZeroRowsOnEveryGroup) {
  for (const auto dtype : st::all_dtypes()) {
    check_all_to_all_v(world(), {3}, dtype, false);
    check_all_to_all_v(groups().expert_parallel, {2, 2}, dtype, true);
    check_all_to_all_v(groups().expert_data_parallel, {}, dtype, false);
  }
}

TEST(Communicator, CollectivesOnSubGroups) {
  const ProcessGroups& g = groups();
  const int r = world().rank();
  // all_reduce over the expert replicas: ranks r%2 and r%2+2.
  at::Tensor t = st::rank_values(r, {5}, at::kFloat);
  Communicator edp = g.expert_data_parallel;
  edp.all_reduce(t);
  EXPECT_TRUE(torch::equal(t, st::rank_values(r % 2, {5}, at::kFloat) + st::rank_values(r % 2 + 2, {5}, at::kFloat)));
  // all_gather over the expert-parallel pair.
  Communicator ep = g.expert_parallel;
  const at::Tensor got = ep.all_gather(st::rank_values(r, {2}, at::kLong));
  EXPECT_TRUE(torch::equal(got, torch::cat({st::rank_values(r / 2 * 2, {2}, at::kLong),
                                            st::rank_values(r / 2 * 2 + 1, {2}, at::kLong)})));
  // reduce_scatter (avg) over every rank for the dense parameters.
  Communicator dp = g.data_parallel;
  const at::Tensor rs = dp.reduce_scatter(st::rank_values(r, {8, 3}, at::kDouble), ReduceOp::kAvg);
  at::Tensor expected = st::rank_values(0, {8, 3}, at::kDouble);
  for (int q = 1; q < 4; ++q) expected = expected + st::rank_values(q, {8, 3}, at::kDouble);
  EXPECT_TRUE(torch::allclose(rs, (expected / 4).slice(0, 2 * r, 2 * r + 2)));
  // broadcast from group rank 1 of each expert-parallel pair.
  at::Tensor b = torch::full({3}, r, torch::kInt);
  ep.broadcast(b, 1);
  EXPECT_TRUE(torch::equal(b, torch::full({3}, r / 2 * 2 + 1, torch::kInt)));
}

TEST(Communicator, CollectivesOfSeveralGroupsInFlight) {
  const ProcessGroups& g = groups();
  Communicator ep = g.expert_parallel, edp = g.expert_data_parallel, dp = g.data_parallel;
  const int r = world().rank();
  // The all-to-all of tokens on the expert-parallel group, the gradient reductions on the
  // others, all outstanding together and waited in another order than started.
  const at::Tensor tokens = torch::arange(4, torch::kFloat).reshape({2, 2}) + 10 * r;
  auto a2a = ep.all_to_all_v_async(tokens, {1, 1}, {1, 1});
  at::Tensor expert_grad = torch::full({1000}, static_cast<float>(r));
  auto ar = edp.all_reduce_async(expert_grad, ReduceOp::kSum);
  at::Tensor dense_grad = torch::full({4, 10}, static_cast<double>(r));
  auto rs = dp.reduce_scatter_async(dense_grad, ReduceOp::kAvg);
  auto bar = world().barrier_async();
  ar->wait();
  bar->wait();
  a2a->wait();
  rs->wait();
  const int peer = r ^ 1;  // the other rank of the expert-parallel pair
  const int lo = std::min(r, peer);
  const at::Tensor lo_tokens = torch::arange(4, torch::kFloat).reshape({2, 2}) + 10 * lo;
  const at::Tensor hi_tokens = lo_tokens + 10;
  const int me = r % 2;  // my row of each pair member's tokens
  EXPECT_TRUE(torch::equal(a2a->result(), torch::stack({lo_tokens[me], hi_tokens[me]})));
  EXPECT_TRUE(torch::equal(expert_grad, torch::full({1000}, static_cast<float>(r % 2 + r % 2 + 2))));
  EXPECT_TRUE(torch::equal(rs->result(), torch::full({1, 10}, 1.5, torch::kDouble)));
}

// Note [bf16 and fp16 reductions over MPI]: 1 + 3 * 2^-8 is rounded once to bfloat16
// (giving 1 + 2^-6); adding in bfloat16 in rank order would round 1 + 2^-8 back to 1 at
// every step. Likewise 1 + 3 * 2^-12 in float16.
TEST(Communicator, Bf16SumIsRoundedOnce) {
  const int r = world().rank();
  at::Tensor t = torch::full({4}, r == 0 ? 1.0 : 0.00390625, torch::kBFloat16);
  world().all_reduce(t);
  EXPECT_TRUE(torch::equal(t, torch::full({4}, 1.015625, torch::kBFloat16))) << t;
  at::Tensor h = torch::full({4}, r == 0 ? 1.0 : 0.000244140625, torch::kHalf);  // 2^-12 in float16
  world().all_reduce(h);
  EXPECT_TRUE(torch::equal(h, torch::full({4}, 1.0 + 0.000732421875, torch::kFloat).to(torch::kHalf))) << h;
}

TEST(Communicator, ArgumentErrorsNameTheSubGroup) {
  Communicator ep = groups().expert_parallel;
  st::expect_error([&] { ep.all_to_all_v(torch::zeros({4, 2}), {1, 1, 1, 1}, {1, 1, 1, 1}); },
                   {"all_to_all_v on group 'expert_parallel'", "send_splits must have 2 entries", "got 4"});
  Communicator dp = groups().data_parallel;
  st::expect_error([&] { dp.reduce_scatter(torch::zeros({6, 2})); },
                   {"reduce_scatter on group 'data_parallel'", "divisible by the group size 4"});
}

int main(int argc, char** argv) { return st::run_all_tests_on_every_rank(argc, argv); }
