#include "switchyard/dispatch/token_dispatcher.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <numeric>

#include "switchyard/dispatch/all_to_all_autograd.h"
#include "switchyard/dispatch/capacity_exchange.h"
#include "switchyard/ops/permute.h"
#include "switchyard/ops/routing.h"

namespace switchyard::dispatch {
namespace {

int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

}  // namespace

at::Tensor kept_slots(const ops::Routing& routing) { return ops::kept_slot_mask(routing); }

TokenDispatcher::TokenDispatcher(comm::Communicator group, ExpertPlacement placement)
    : group_(std::move(group)), placement_(std::move(placement)) {
  TORCH_CHECK_VALUE(placement_.num_ranks() == group_.size(), "TokenDispatcher: the placement "
                    "spreads experts over ", placement_.num_ranks(), " ranks but ",
                    group_.describe(), " has ", group_.size());
}

DispatchPlan TokenDispatcher::plan(const at::Tensor& topk_experts_TK, const at::Tensor& kept_TK) const {
  const int64_t R = placement_.num_ranks(), E = placement_.num_experts();
  const c10::Device device = topk_experts_TK.device();
  const at::Tensor experts = topk_experts_TK.clamp(0, E - 1);  // ids >= E are never kept
  DispatchPlan p;
  p.dest_TK = at::where(kept_TK, placement_.rank_of_expert_tensor(device).index_select(0, experts.flatten())
                                     .view_as(experts), R);
  p.local_id_TK = at::where(kept_TK, placement_.local_index_tensor(device).index_select(0, experts.flatten())
                                         .view_as(experts), -1);
  // Column R collects the slots that go nowhere.
  at::Tensor present = at::zeros({topk_experts_TK.size(0), R + 1}, kept_TK.options());
  present.scatter_(1, p.dest_TK, true);
  p.present_TR = present.narrow(1, 0, R);
  at::Tensor slots = at::zeros({R + 1}, topk_experts_TK.options());
  slots.index_add_(0, p.dest_TK.flatten(), at::ones_like(p.dest_TK.flatten()));
  p.counts_R2 = at::stack({p.present_TR.sum(0), slots.narrow(0, 0, R)}, 1);
  return p;
}

void TokenDispatcher::exchange_counts(const DispatchPlan& plan, std::vector<int64_t>& send_rows,
                                      std::vector<int64_t>& recv_rows,
                                      std::vector<int64_t>& send_slots,
                                      std::vector<int64_t>& recv_slots) const {
  const int64_t R = placement_.num_ranks();
  const std::vector<int64_t> ones(R, 1);
  comm::Communicator group = group_;
  const at::Tensor recv_R2 = group.all_to_all_v(plan.counts_R2.contiguous(), ones, ones);
  // SYNC_POINT(dispatch_counts): the host needs the row and slot counts of every peer to
  // size the exchanges and the regrouped blocks. One copy of [2R, 2] int64.
  const at::Tensor host = at::cat({plan.counts_R2, recv_R2}).to(at::kCPU).contiguous();
  const int64_t* c = host.data_ptr<int64_t>();
  send_rows.assign(R, 0), recv_rows.assign(R, 0), send_slots.assign(R, 0), recv_slots.assign(R, 0);
  for (int64_t r = 0; r < R; ++r) {
    send_rows[r] = c[2 * r];
    send_slots[r] = c[2 * r + 1];
    recv_rows[r] = c[2 * (R + r)];
    recv_slots[r] = c[2 * (R + r) + 1];
  }
}

DispatchResult TokenDispatcher::dispatch(const at::Tensor& x_Td, const ops::Routing& routing,
                                         const PairCapacities* capacities) const {
  const at::Tensor& topk = routing.topk_experts;
  TORCH_CHECK_VALUE(x_Td.dim() == 2, "TokenDispatcher.dispatch: expected x of shape [T, d], got ",
                    x_Td.sizes());
  TORCH_CHECK_VALUE(topk.dim() == 2 && topk.size(0) == x_Td.size(0), "TokenDispatcher.dispatch: "
                    "expected routing.topk_experts of shape [", x_Td.size(0), ", K], got ", topk.sizes());
  TORCH_CHECK_VALUE(routing.topk_weights.sizes() == topk.sizes(), "TokenDispatcher.dispatch: "
                    "expected routing.topk_weights of shape ", topk.sizes(), ", got ",
                    routing.topk_weights.sizes());
  TORCH_CHECK_VALUE(routing.expert_counts.size(0) == placement_.num_experts(),
                    "TokenDispatcher.dispatch: the routing has ", routing.expert_counts.size(0),
                    " routed experts but the placement ", placement_.num_experts());
  const int64_t T = x_Td.size(0), K = topk.size(1), R = placement_.num_ranks();
  const int64_t me = group_.rank();
  const int64_t L = placement_.num_local_experts(me);

  // 1. plan
  const DispatchPlan p = plan(topk, kept_slots(routing));
  auto h = std::make_shared<DispatchHandle>();
  h->num_tokens = T;
  h->num_local_experts = L;
  std::vector<int64_t> send_slots, recv_slots;
  at::Tensor recv_ids, recv_x, recv_w;  // [M,K], [M,d], [M,K]
  DispatchStats& st = h->stats;
  const int64_t row_bytes = x_Td.size(1) * x_Td.element_size();
  const int64_t id_bytes = 8, w_bytes = routing.topk_weights.element_size();
  if (capacities != nullptr) {
    // 2+3. speculative capacity: one exchange, counts in the headers.
    CapacityExchangeResult ex = capacity_exchange(group_, p, x_Td, routing.topk_weights, *capacities);
    h->send_splits = std::move(ex.send_rows);
    h->recv_splits = std::move(ex.recv_rows);
    send_slots = std::move(ex.send_slots);
    recv_slots = std::move(ex.recv_slots);
    h->send_rank = ex.send_rank;
    h->send_token_index = ex.send_token_index;
    recv_ids = ex.recv_ids_MK;
    recv_x = ex.recv_x_Md;
    recv_w = ex.recv_w_MK;
    st.speculative = 1;
    st.collectives = ex.collectives;
    st.host_syncs = 1;
    st.host_syncs_before_payload = 0;
    st.bytes_moved = ex.bytes_sent;
    st.padding_bytes = ex.padding_bytes;
    st.second_round = ex.second_round ? 1 : 0;
    st.overflow_rows_sent = ex.overflow_rows_sent;
    st.overflow_rows_received = ex.overflow_rows_received;
  } else {
    // 2. counts (the one host synchronisation)
    exchange_counts(p, h->send_splits, h->recv_splits, send_slots, recv_slots);
    const int64_t N = sum(h->send_splits);
    // Send rows in (rank, token) order: nonzero of the transposed presence, sized by the
    // counts already on the host (nonzero_static: no second synchronisation).
    const at::Tensor rt = at::nonzero_static(p.present_TR.t(), N, -1);
    h->send_rank = rt.select(1, 0).contiguous();
    h->send_token_index = rt.select(1, 1).contiguous();
    const at::Tensor mine =  // [N,K]: slot j of the row's token goes to the row's rank
        p.dest_TK.index_select(0, h->send_token_index) == h->send_rank.unsqueeze(1);
    const at::Tensor send_ids = at::where(mine, p.local_id_TK.index_select(0, h->send_token_index), -1);
    const at::Tensor send_w = at::where(
        mine, routing.topk_weights.index_select(0, h->send_token_index), 0.0);
    const at::Tensor send_x = x_Td.index_select(0, h->send_token_index);

    // 3. exchange
    comm::Communicator group = group_;
    recv_ids = group.all_to_all_v(send_ids.contiguous(), h->send_splits, h->recv_splits);
    const std::vector<at::Tensor> recv =
        all_to_all_v_autograd(group_, {send_x, send_w}, h->send_splits, h->recv_splits);
    recv_x = recv[0];
    recv_w = recv[1];
    st.collectives = 4;  // counts, ids, rows, weights
    st.host_syncs = 1;
    st.host_syncs_before_payload = 1;
    const int64_t remote_rows = N - h->send_splits[me];
    st.bytes_moved = (R - 1) * 2 * id_bytes + remote_rows * (row_bytes + K * (id_bytes + w_bytes));
  }
  const int64_t N = sum(h->send_splits), M = sum(h->recv_splits), S = sum(recv_slots);

  // 4. regroup: the S used slots of the M*K, stable-sorted by local expert (rows ascending
  // within an expert: source rank, then token).
  const at::Tensor ids = recv_ids.flatten();
  const at::Tensor key = at::where(ids >= 0, ids, L);
  const at::Tensor order = std::get<1>(at::sort(key, /*stable=*/true, 0, false)).narrow(0, 0, S);
  h->slot_expert = ids.index_select(0, order);
  h->slot_row = at::floor_divide(order, K);
  h->slot_weight = recv_w.flatten().index_select(0, order);
  h->local_counts = at::zeros({L}, ids.options());
  h->local_counts.index_add_(0, h->slot_expert, at::ones_like(h->slot_expert));

  // Statistics (host integers only).
  st.rows_sent = N;
  st.slots_sent = sum(send_slots);
  st.remote_rows_sent = N - h->send_splits[me];
  st.remote_slots_sent = st.slots_sent - send_slots[me];
  st.rows_received = M;
  st.slots_received = S;
  st.bytes_dispatched = st.remote_rows_sent * (row_bytes + K * (id_bytes + w_bytes));
  st.bytes_dispatched_without_dedup = st.remote_slots_sent * (row_bytes + id_bytes + w_bytes);
  st.bytes_combined = st.remote_rows_sent * row_bytes;
  st.bytes_combined_without_dedup = st.remote_slots_sent * row_bytes;
  st.bytes_combine_sent = (M - h->recv_splits[me]) * row_bytes;

  DispatchResult result;
  result.expert_rows = ops::permute_tokens(recv_x, h->slot_row, h->slot_expert);
  result.local_counts = h->local_counts;
  result.handle = std::move(h);
  return result;
}

at::Tensor TokenDispatcher::combine(const DispatchHandle& h, const at::Tensor& expert_rows_Sd) const {
  TORCH_CHECK_VALUE(expert_rows_Sd.dim() == 2 && expert_rows_Sd.size(0) == h.slot_row.size(0),
                    "TokenDispatcher.combine: expected expert rows of shape [", h.slot_row.size(0),
                    ", d] (the slots dispatch received), got ", expert_rows_Sd.sizes());
  // 5. reduce each received row's experts, weighted.
  const at::Tensor partial = ops::unpermute_tokens(expert_rows_Sd, h.slot_row, h.slot_expert,
                                                   h.slot_weight, sum(h.recv_splits));
  // 6. send the partial rows back.
  const at::Tensor back = all_to_all_v_autograd(group_, {partial}, h.recv_splits, h.send_splits)[0];
  // 7. sum each token's partial rows; rows are in rank order, so ascending rank.
  return ops::unpermute_tokens(back, h.send_token_index, h.send_rank, std::nullopt, h.num_tokens);
}

}  // namespace switchyard::dispatch
