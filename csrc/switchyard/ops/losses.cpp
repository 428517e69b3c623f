// Load-balancing losses: switch_aux_loss, z_loss, sequence_aux_loss.
//
// All three are composites of ATen ops registered under CompositeImplicitAutograd: they
// run on every device, autograd differentiates them, and torch.compile traces them (with
// dynamic shapes: sizes are read as SymInts, never as plain integers). docs/losses.md
// states each formula with its paper.
//
// Note [Normalised scores]
// The Switch and sequence losses balance the router's normalised score p_{t,e}:
//   softmax:  p_t = softmax(logits_t) over all E router outputs (Switch, GShard);
//   sigmoid:  p_{t,e} = sigmoid(logits_{t,e}) / sum_e' sigmoid(logits_{t,e'})
//             (the normalised affinities of DeepSeek-V3, eq. 18-20).
// The scores are computed in float32, or float64 for float64 logits, whatever the logits'
// dtype: a loss accumulated in bfloat16 loses the small differences it exists to see.
//
// Note [Sizes without integers]
// The frequencies f_e are built from counts without dividing by T*K: every slot counts
// once, so E * f_e = count_e / mean_e(count_e) (and per sequence E/(K*L) * count_i =
// count_i / mean_i(count_i)). This keeps the formulas free of size arithmetic, so the
// composites trace under dynamic shapes exactly as they run in eager mode.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/library.h>

#include "switchyard/ops/balancing.h"

namespace switchyard::ops {

namespace detail {

namespace {

// Note [Checking expert ids]
// Reading the values of an id tensor needs them on the host: free for a real CPU tensor,
// a device synchronisation for a CUDA one, and impossible for the fake tensors that
// torch.compile traces with. So real CPU tensors are checked at once with a message that
// shows the offending range; everything else gets at::_assert_async, which CUDA checks
// asynchronously on the device and torch.compile keeps in its graph as a runtime assert.
bool host_readable(const at::Tensor& t) {
  const c10::DispatchKeySet wrapped({c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot,
                                     c10::DispatchKey::Functionalize,
                                     c10::DispatchKey::FuncTorchBatched,
                                     c10::DispatchKey::FuncTorchGradWrapper});
  return t.device().is_cpu() && !t.key_set().has_any(wrapped) &&
         !t.unsafeGetTensorImpl()->has_symbolic_sizes_strides() &&
         !c10::impl::dispatch_mode_enabled();
}

}  // namespace

void check_expert_ids(const at::Tensor& ids, const c10::SymInt& num_experts,
                      const char* op_name, const char* arg_name) {
  if (ids.is_meta()) return;  // no values to check
  if (host_readable(ids)) {
    if (ids.numel() == 0) return;
    const auto [lo_t, hi_t] = at::aminmax(ids);
    const int64_t lo = lo_t.item<int64_t>(), hi = hi_t.item<int64_t>();
    const int64_t n = num_experts.guard_int(__FILE__, __LINE__);
    TORCH_CHECK(lo >= 0 && hi < n, op_name, ": expected every value of ", arg_name,
                " to be an expert id in [0, ", n, "), got values in [", lo, ", ", hi, "]");
    return;
  }
  const auto n = num_experts.maybe_as_int();
  const std::string msg = std::string(op_name) + ": expected every value of " + arg_name +
                          " to be an expert id in [0, " +
                          (n ? std::to_string(*n) : std::string("number of experts")) + ")";
  at::_assert_async(at::logical_and(ids.ge(0), ids.lt(c10::Scalar(num_experts))).all(), msg);
}

}  // namespace detail

namespace {

// Float32, or float64 for float64 inputs (Note [Normalised scores]).
at::ScalarType loss_dtype(const at::Tensor& logits) {
  return at::promote_types(logits.scalar_type(), at::kFloat);
}

void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.dim() == 2, op, ": expected logits to be a 2-D [T, E] tensor, got ",
              logits.dim(), "-D with shape ", logits.sym_sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), op,
              ": expected logits to be floating point, got ", logits.scalar_type());
  TORCH_CHECK(logits.sym_size(1) >= 1, op,
              ": expected logits to have at least one expert column, got shape ",
              logits.sym_sizes());
}

void check_topk_experts(const at::Tensor& logits, const at::Tensor& topk_experts,
                        const char* op) {
  TORCH_CHECK(topk_experts.dim() == 2, op,
              ": expected topk_experts to be a 2-D [T, K] tensor, got ", topk_experts.dim(),
              "-D with shape ", topk_experts.sym_sizes());
  TORCH_CHECK(topk_experts.scalar_type() == at::kLong, op,
              ": expected topk_experts to be int64, got ", topk_experts.scalar_type());
  TORCH_CHECK(topk_experts.device() == logits.device(), op,
              ": expected topk_experts on the device of logits (", logits.device(), "), got ",
              topk_experts.device());
  TORCH_CHECK(topk_experts.sym_size(0) == logits.sym_size(0), op,
              ": expected topk_experts to have one row per token of logits (T = ",
              logits.sym_size(0), "), got ", topk_experts.sym_size(0), " rows");
  TORCH_CHECK(topk_experts.sym_size(1) >= 1, op,
              ": expected topk_experts to select at least one expert per token (K >= 1), got "
              "shape ",
              topk_experts.sym_sizes());
  detail::check_expert_ids(topk_experts, logits.sym_size(1), op, "topk_experts");
}

void check_score_func(c10::string_view score_func, const char* op) {
  TORCH_CHECK(score_func == "softmax" || score_func == "sigmoid", op,
              ": expected score_func to be \"softmax\" or \"sigmoid\", got \"", score_func,
              "\"");
}

// The normalised scores p [T,E] of Note [Normalised scores] (score_func already checked).
at::Tensor normalised_scores(const at::Tensor& logits, c10::string_view score_func) {
  const auto x = logits.to(loss_dtype(logits));
  if (score_func == "softmax") return at::softmax(x, -1);
  const auto s = at::sigmoid(x);
  return s / s.sum(-1, /*keepdim=*/true);
}

// Slot counts per expert: counts[e] = #{(t,k) : ids[t,k] == e}, in like's dtype and shape
// [E] (like = any [E] tensor; ids flattened). Differentiable inputs never reach it.
at::Tensor count_slots(const at::Tensor& like_E, const at::Tensor& ids) {
  const auto flat = ids.reshape(-1);
  return at::zeros_like(like_E, at::MemoryFormat::Contiguous)
      .scatter_add(0, flat, at::ones_like(flat, like_E.options()));
}

// ---- the operators --------------------------------------------------------------------

at::Tensor switch_aux_loss_impl(const at::Tensor& logits_TE, const at::Tensor& topk_experts_TK,
                                c10::string_view score_func, int64_t num_null_experts) {
  constexpr const char* op = "switch_aux_loss";
  check_logits(logits_TE, op);
  check_topk_experts(logits_TE, topk_experts_TK, op);
  check_score_func(score_func, op);
  TORCH_CHECK(num_null_experts >= 0 && logits_TE.sym_size(1) > num_null_experts, op,
              ": expected num_null_experts in [0, E) with E = ", logits_TE.sym_size(1),
              " router outputs (at least one real expert), got ", num_null_experts);
  const auto p_TE = normalised_scores(logits_TE, score_func);
  if (logits_TE.sym_size(0) == 0) return p_TE.sum();  // no tokens: 0, still in the graph

  // 1. P_e: mean score of expert e. 2. E * f_e = count_e / mean(count) (Note [Sizes without
  // integers]); counts carry no gradient, so the gradient flows through P only.
  const auto P_E = p_TE.mean(0);
  const auto counts_E = count_slots(P_E, topk_experts_TK);
  const auto Ef_E = counts_E / counts_E.mean();
  if (num_null_experts == 0) return (Ef_E * P_E).sum();

  // 3. AdaMoE null experts are interchangeable: replace each one's f and P by the pool
  // mean, so that how tokens spread among identical nulls is not penalised:
  //   sum_{null e} f_e P_e  ->  N * mean_null(f) * mean_null(P).
  const int64_t N = num_null_experts;
  const auto routed = (Ef_E.slice(0, 0, -N) * P_E.slice(0, 0, -N)).sum();
  const auto nulls = Ef_E.slice(0, -N).mean() * P_E.slice(0, -N).mean() * N;
  return routed + nulls;
}

at::Tensor z_loss_impl(const at::Tensor& logits_TE) {
  check_logits(logits_TE, "z_loss");
  const auto lse_T = at::logsumexp(logits_TE.to(loss_dtype(logits_TE)), {1});
  const auto sq_T = lse_T * lse_T;
  if (logits_TE.sym_size(0) == 0) return sq_T.sum();
  return sq_T.mean();
}

at::Tensor sequence_aux_loss_impl(const at::Tensor& logits_TE,
                                  const at::Tensor& topk_experts_TK, int64_t seq_len,
                                  c10::string_view score_func) {
  constexpr const char* op = "sequence_aux_loss";
  check_logits(logits_TE, op);
  check_topk_experts(logits_TE, topk_experts_TK, op);
  check_score_func(score_func, op);
  TORCH_CHECK(seq_len > 0, op, ": expected seq_len > 0, got ", seq_len);
  TORCH_CHECK(logits_TE.sym_size(0) % seq_len == 0, op,
              ": expected the number of tokens T to be a multiple of seq_len, got T = ",
              logits_TE.sym_size(0), " and seq_len = ", seq_len);
  const auto p_TE = normalised_scores(logits_TE, score_func);
  if (logits_TE.sym_size(0) == 0) return p_TE.sum();

  // B = T / L sequences. 1. P_{b,i}: mean score over sequence b. 2. f_{b,i} =
  // E/(K L) count_{b,i} = count_{b,i} / mean_i count_{b,i} (Note [Sizes without integers]).
  // 3. loss = mean_b sum_i f_{b,i} P_{b,i}.
  const auto P_BE = p_TE.unflatten(0, {-1, seq_len}).mean(1);
  const auto ids_BS = topk_experts_TK.unflatten(0, {-1, seq_len}).flatten(1);  // [B, L*K]
  const auto counts_BE = at::zeros_like(P_BE, at::MemoryFormat::Contiguous)
                             .scatter_add(1, ids_BS, at::ones_like(ids_BS, P_BE.options()));
  const auto f_BE = counts_BE / counts_BE.mean(1, /*keepdim=*/true);
  return (f_BE * P_BE).sum(1).mean();
}

}  // namespace

// ---- C++ API: through the dispatcher ----------------------------------------------------

at::Tensor switch_aux_loss(const at::Tensor& logits_TE, const at::Tensor& topk_experts_TK,
                           c10::string_view score_func, int64_t num_null_experts) {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::switch_aux_loss", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, int64_t)>();
  return handle.call(logits_TE, topk_experts_TK, score_func, num_null_experts);
}

at::Tensor z_loss(const at::Tensor& logits_TE) {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("switchyard::z_loss", "")
                                 .typed<at::Tensor(const at::Tensor&)>();
  return handle.call(logits_TE);
}

at::Tensor sequence_aux_loss(const at::Tensor& logits_TE, const at::Tensor& topk_experts_TK,
                             int64_t seq_len, c10::string_view score_func) {
  static const auto handle =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("switchyard::sequence_aux_loss", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view)>();
  return handle.call(logits_TE, topk_experts_TK, seq_len, score_func);
}

}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CompositeImplicitAutograd, m) {
  m.impl("switch_aux_loss", &switchyard::ops::switch_aux_loss_impl);
  m.impl("z_loss", &switchyard::ops::z_loss_impl);
  m.impl("sequence_aux_loss", &switchyard::ops::sequence_aux_loss_impl);
}
