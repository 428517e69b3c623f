// Note [Speculative capacity] (capacity_exchange.h) is the algorithm; this file packs the
// rows, runs the two rounds and wraps them in one autograd node.
#include "switchyard/dispatch/capacity_exchange.h"

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>

#include <algorithm>
#include <numeric>

namespace switchyard::dispatch {
namespace {

int64_t pad8(int64_t bytes) { return (bytes + 7) / 8 * 8; }

int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

// Exclusive prefix sums.
std::vector<int64_t> starts(const std::vector<int64_t>& v) {
  std::vector<int64_t> out(v.size(), 0);
  for (size_t i = 1; i < v.size(); ++i) out[i] = out[i - 1] + v[i - 1];
  return out;
}

// A host vector on `device`. On CUDA through pinned memory and a non-blocking copy: a
// pageable copy would synchronise the host with the stream.
at::Tensor to_device(const std::vector<int64_t>& v, const c10::Device& device) {
  at::Tensor host = at::tensor(v, at::kLong);
  if (device.is_cpu()) return host;
  return host.pin_memory().to(device, at::kLong, /*non_blocking=*/true);
}

// One packed row: K ids (int64) | K weights | the token's d values; each part starts at a
// multiple of 8 bytes so that it can be viewed back in its dtype.
struct RowLayout {
  RowLayout(int64_t K, const at::Tensor& w, const at::Tensor& x)
      : K(K), d(x.size(1)), w_dtype(w.scalar_type()), x_dtype(x.scalar_type()) {
    ids_bytes = K * 8;
    w_offset = ids_bytes;
    w_bytes = K * static_cast<int64_t>(w.element_size());
    x_offset = w_offset + pad8(w_bytes);
    x_bytes = d * static_cast<int64_t>(x.element_size());
    row_bytes = x_offset + pad8(x_bytes);
  }
  int64_t K, d;
  at::ScalarType w_dtype, x_dtype;
  int64_t ids_bytes, w_offset, w_bytes, x_offset, x_bytes, row_bytes;
};
constexpr int64_t kHeaderBytes = 16;  // int64 rows, int64 slots: fits any row (>= 24 bytes)

// [n, cols] of any dtype -> [n, width] bytes (zero padding on the right).
at::Tensor as_bytes(const at::Tensor& t, int64_t width) {
  const at::Tensor b = t.contiguous().view(at::kByte);  // [n, cols * element size]
  return b.size(1) == width ? b : at::constant_pad_nd(b, {0, width - b.size(1)}, 0);
}

// The part of packed rows `buf` [n, row_bytes] at `byte_offset`, seen as [n, cols] of
// `dtype` (a strided view: no copy). Offsets and row_bytes are multiples of 8.
at::Tensor part(const at::Tensor& buf, at::ScalarType dtype, int64_t byte_offset, int64_t cols) {
  const int64_t size = static_cast<int64_t>(c10::elementSize(dtype));
  return buf.view(dtype).narrow(1, byte_offset / size, cols);
}

// Writes the ids and weights of the packed rows of (rank r_n[i], token t_n[i]) into rows
// dest[i] of `buf`: exactly what the exact path sends (ids of the token's slots on r and
// their weights, -1 / 0 elsewhere). The token parts are written by write_tokens.
void write_meta(const RowLayout& L, const at::Tensor& buf, const at::Tensor& dest, const DispatchPlan& p,
                const at::Tensor& w_TK, const at::Tensor& r_n, const at::Tensor& t_n) {
  const at::Tensor mine = p.dest_TK.index_select(0, t_n) == r_n.unsqueeze(1);
  part(buf, at::kLong, 0, L.K).index_copy_(0, dest, at::where(mine, p.local_id_TK.index_select(0, t_n), -1));
  part(buf, L.w_dtype, L.w_offset, L.K).index_copy_(0, dest, at::where(mine, w_TK.index_select(0, t_n), 0.0));
}

// Row i of `buf` gets token src[i]: one gather straight into the strided token columns
// (no temporary: the same single pass over the rows as the exact path's index_select).
void write_tokens(const RowLayout& L, const at::Tensor& buf, const at::Tensor& x_Td, const at::Tensor& src) {
  at::Tensor out = part(buf, L.x_dtype, L.x_offset, L.d);
  at::index_select_out(out, x_Td, 0, src);
}

// Everything the backward needs, and the forward's results for the caller.
struct ExchangeState : torch::CustomClassHolder {
  ExchangeState(comm::Communicator g, const DispatchPlan& p, PairCapacities c)
      : group(std::move(g)), plan(&p), caps(std::move(c)) {}
  comm::Communicator group;
  const DispatchPlan* plan;  // forward only
  PairCapacities caps;
  CapacityExchangeResult result;
  at::Tensor mine_NK;  // [N,K] the slots of each sent row's token that went with it
  int64_t T = 0, K = 0, d = 0;
};

// Rounds 1-3 of Note [Speculative capacity]; fills s.result (all but the differentiable
// outputs, which it returns).
std::pair<at::Tensor, at::Tensor> run_exchange(ExchangeState& s, const at::Tensor& x_Td, const at::Tensor& w_TK) {
  const DispatchPlan& p = *s.plan;
  CapacityExchangeResult& res = s.result;
  comm::Communicator group = s.group;
  const int64_t R = group.size(), me = group.rank(), T = x_Td.size(0), K = w_TK.size(1);
  const c10::Device device = x_Td.device();
  const RowLayout L(K, w_TK, x_Td);
  const std::vector<int64_t>& cap_send = s.caps.send;
  const std::vector<int64_t>& cap_recv = s.caps.recv;

  // 1. round 1: blocks of 1 header + capacity rows; the token rows of each block are its
  // rank's rows in token order, cut at the capacity.
  std::vector<int64_t> block_send(R), block_recv(R);
  for (int64_t r = 0; r < R; ++r) block_send[r] = 1 + cap_send[r], block_recv[r] = 1 + cap_recv[r];
  const std::vector<int64_t> send_start = starts(block_send), recv_start = starts(block_recv);
  const int64_t send_total = sum(block_send), recv_total = sum(block_recv), C1 = sum(cap_send);

  const at::Tensor present_RT = p.present_TR.t();
  const at::Tensor pos_RT = present_RT.to(at::kLong).cumsum(1) - 1;  // row's index within its rank
  const at::Tensor cap_R = to_device(cap_send, device);
  const at::Tensor start_R = to_device(send_start, device);
  // One spare row at the end takes the padding entries of nonzero_static. Unused capacity
  // is left uninitialised: the receiver reads only the header and the first n rows.
  at::Tensor send1 = at::empty({send_total + 1, L.row_bytes}, x_Td.options().dtype(at::kByte));
  if (C1 > 0 && T > 0) {
    const at::Tensor first_RT = present_RT & (pos_RT < cap_R.unsqueeze(1));
    // Sized by the capacity (host-known), not the true count: no synchronisation.
    const at::Tensor rt = at::nonzero_static(first_RT, C1, -1);
    const at::Tensor r = rt.select(1, 0), t = rt.select(1, 1);
    const at::Tensor valid = r >= 0;
    const at::Tensor r0 = r.clamp_min(0), t0 = t.clamp_min(0);
    const at::Tensor dest = at::where(valid, start_R.index_select(0, r0) + 1 +
                                                 pos_RT.flatten().index_select(0, r0 * T + t0),
                                      send_total);
    // Every row's token (padding rows take token 0: they are never read), then the metadata.
    write_tokens(L, send1, x_Td, at::zeros({send_total + 1}, dest.options()).index_copy_(0, dest, t0));
    write_meta(L, send1, dest, p, w_TK, r0, t0);
  }
  send1.index_copy_(0, start_R, as_bytes(p.counts_R2.contiguous(), L.row_bytes));
  const at::Tensor recv1 = group.all_to_all_v(send1.narrow(0, 0, send_total), block_send, block_recv);
  res.collectives = 1;

  // SYNC_POINT(capacity_counts): this rank's true counts and every sender's header, in one
  // copy -- after the payload moved. Only the overflow and the output sizes need the host.
  const at::Tensor hdr = part(recv1, at::kLong, 0, kHeaderBytes / 8).index_select(0, to_device(recv_start, device));
  const at::Tensor host = at::cat({p.counts_R2, hdr}).to(at::kCPU).contiguous();
  const int64_t* c = host.data_ptr<int64_t>();
  res.send_rows.assign(R, 0), res.send_slots.assign(R, 0), res.recv_rows.assign(R, 0), res.recv_slots.assign(R, 0);
  std::vector<int64_t> over_send(R, 0), over_recv(R, 0);
  for (int64_t r = 0; r < R; ++r) {
    res.send_rows[r] = c[2 * r], res.send_slots[r] = c[2 * r + 1];
    res.recv_rows[r] = c[2 * (R + r)], res.recv_slots[r] = c[2 * (R + r) + 1];
    over_send[r] = std::max<int64_t>(0, res.send_rows[r] - cap_send[r]);
    over_recv[r] = std::max<int64_t>(0, res.recv_rows[r] - cap_recv[r]);
  }
  const int64_t O_send = sum(over_send), O_recv = sum(over_recv);
  res.overflow_rows_sent = O_send;
  res.overflow_rows_received = O_recv;
  for (int64_t r = 0; r < R; ++r) {
    if (r == me) continue;
    const int64_t used = std::min(res.send_rows[r], cap_send[r]);
    res.bytes_sent += (block_send[r] + over_send[r]) * L.row_bytes;
    res.padding_bytes += (block_send[r] - used) * L.row_bytes;
  }

  // 2. round 2: the rows beyond a capacity, point-to-point between the pairs concerned.
  at::Tensor recv2;
  if (O_send > 0 || O_recv > 0) {
    res.second_round = true;
    const at::Tensor send2 = at::empty({O_send, L.row_bytes}, send1.options());
    if (O_send > 0) {
      const at::Tensor rt = at::nonzero_static(present_RT & (pos_RT >= cap_R.unsqueeze(1)), O_send, -1);
      const at::Tensor t = rt.select(1, 1).contiguous();
      write_tokens(L, send2, x_Td, t);
      write_meta(L, send2, at::arange(O_send, rt.options()), p, w_TK, rt.select(1, 0).contiguous(), t);
    }
    recv2 = group.send_recv(send2, over_send, over_recv);
  }

  // 3. unpack in the exact order: per source, its round-1 rows then its overflow rows.
  const int64_t M = sum(res.recv_rows);
  std::vector<int64_t> gather;
  gather.reserve(M);
  int64_t over_at = recv_total;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t first = std::min(res.recv_rows[r], cap_recv[r]);
    for (int64_t i = 0; i < first; ++i) gather.push_back(recv_start[r] + 1 + i);
    for (int64_t i = 0; i < over_recv[r]; ++i) gather.push_back(over_at + i);
    over_at += over_recv[r];
  }
  // One gather per part, straight from the received bytes into new contiguous tensors.
  const at::Tensor source = recv2.defined() ? at::cat({recv1, recv2}) : recv1;
  const at::Tensor rows = to_device(gather, device);
  res.recv_ids_MK = part(source, at::kLong, 0, K).index_select(0, rows);
  at::Tensor recv_w = part(source, L.w_dtype, L.w_offset, K).index_select(0, rows);
  at::Tensor recv_x = part(source, L.x_dtype, L.x_offset, L.d).index_select(0, rows);

  // The send order the combine and the backward need (the exact path's), sized by the
  // counts now on the host.
  const at::Tensor rt = at::nonzero_static(present_RT, sum(res.send_rows), -1);
  res.send_rank = rt.select(1, 0).contiguous();
  res.send_token_index = rt.select(1, 1).contiguous();
  s.mine_NK = p.dest_TK.index_select(0, res.send_token_index) == res.send_rank.unsqueeze(1);
  s.T = T, s.K = K, s.d = L.d;
  return {recv_x, recv_w};
}

class CapacityExchange : public torch::autograd::Function<CapacityExchange> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x_Td,
                                                const at::Tensor& w_TK, c10::intrusive_ptr<ExchangeState> state) {
    auto [recv_x, recv_w] = run_exchange(*state, x_Td, w_TK);
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    ctx->saved_data["x_dtype"] = c10::IValue(x_Td.scalar_type());
    ctx->saved_data["w_dtype"] = c10::IValue(w_TK.scalar_type());
    ctx->saved_data["device"] = c10::IValue(x_Td.device());
    return {recv_x, recv_w};
  }

  // The exact path's backward: reverse exchange (rows, then weights; one order on every
  // rank), then the index_select and where backwards of its send gather.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = c10::static_intrusive_pointer_cast<ExchangeState>(ctx->saved_data["state"].toCapsule());
    const CapacityExchangeResult& res = s->result;
    const int64_t M = sum(res.recv_rows);
    const auto opts = at::TensorOptions().device(ctx->saved_data["device"].toDevice());
    at::Tensor gx = grads[0].defined() ? grads[0]
                                       : at::zeros({M, s->d}, opts.dtype(ctx->saved_data["x_dtype"].toScalarType()));
    at::Tensor gw = grads[1].defined() ? grads[1]
                                       : at::zeros({M, s->K}, opts.dtype(ctx->saved_data["w_dtype"].toScalarType()));
    comm::Communicator group = s->group;
    const at::Tensor gx_N = group.all_to_all_v(gx.contiguous(), res.recv_rows, res.send_rows);
    const at::Tensor gw_N = group.all_to_all_v(gw.contiguous(), res.recv_rows, res.send_rows);
    at::Tensor grad_x = at::zeros({s->T, s->d}, gx_N.options()).index_add_(0, res.send_token_index, gx_N);
    at::Tensor grad_w = at::zeros({s->T, s->K}, gw_N.options())
                            .index_add_(0, res.send_token_index, at::where(s->mine_NK, gw_N, 0));
    return {grad_x, grad_w, at::Tensor()};
  }
};

}  // namespace

CapacityExchangeResult capacity_exchange(const comm::Communicator& group, const DispatchPlan& plan,
                                         const at::Tensor& x_Td, const at::Tensor& w_TK,
                                         const PairCapacities& capacities) {
  const int64_t R = group.size();
  TORCH_CHECK_VALUE(static_cast<int64_t>(capacities.send.size()) == R &&
                        static_cast<int64_t>(capacities.recv.size()) == R,
                    "TokenDispatcher.dispatch: expected capacities with ", R, " send and ", R,
                    " receive entries (one per rank of ", group.describe(), "), got ", capacities.send.size(),
                    " and ", capacities.recv.size());
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK_VALUE(capacities.send[r] >= 0 && capacities.recv[r] >= 0, "TokenDispatcher.dispatch: "
                      "capacities must be >= 0, got send[", r, "] = ", capacities.send[r], ", recv[", r,
                      "] = ", capacities.recv[r]);
  }
  TORCH_CHECK_VALUE(x_Td.dim() == 2 && w_TK.dim() == 2 && w_TK.size(0) == x_Td.size(0),
                    "TokenDispatcher.dispatch: expected x [T, d] and weights [T, K], got ", x_Td.sizes(),
                    " and ", w_TK.sizes());
  auto state = c10::make_intrusive<ExchangeState>(group, plan, capacities);
  const torch::autograd::variable_list out = CapacityExchange::apply(x_Td, w_TK, state);
  CapacityExchangeResult res = state->result;  // the backward keeps its own copy
  state->plan = nullptr;
  res.recv_x_Md = out[0];
  res.recv_w_MK = out[1];
  return res;
}

}  // namespace switchyard::dispatch
