// grouped_mm and grouped_mm_weight_grad: CPU, Meta and Autograd implementations (CUDA in
// grouped_mm_cuda.cpp). See grouped_mm.h for the semantics.
//
// Note [CPU grouped products]
// Large products (at least ~16M multiply-adds per expert on average) run one after the
// other, each with BLAS's own threads: measured on 2 cores, that matches or beats any split
// across threads. Smaller ones are split as follows.
// The expert products are independent, so the CPU kernels give each thread an equal share
// of the work -- for grouped_mm an equal number of grouped rows (pieces of one or more
// experts' blocks), for grouped_mm_weight_grad the same slice of columns of every expert --
// and each thread runs its share as single-threaded BLAS calls (inside at::parallel_for,
// ATen keeps BLAS to one thread). Equal shares matter: routed experts are never exactly
// balanced, and a thread left idle costs as much as the imbalance. Fine-grained MoEs (many
// small experts) keep every core busy where a loop of multithreaded products over small
// matrices would not. The counts are read on the host, which for CPU tensors is free.
#include "switchyard/ops/grouped_mm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace switchyard::ops {

namespace detail {

namespace {

void check_common(const char* op, const at::Tensor& a_Nk, const at::Tensor& counts_E) {
  TORCH_CHECK(a_Nk.dim() == 2, op, ": expected a to be a 2-D [N, k] tensor of rows grouped by "
              "expert, got ", a_Nk.dim(), "-D with shape ", a_Nk.sym_sizes());
  TORCH_CHECK(at::isFloatingType(a_Nk.scalar_type()), op,
              ": expected a to be floating point, got ", a_Nk.scalar_type());
  TORCH_CHECK(counts_E.dim() == 1 && counts_E.scalar_type() == at::kLong, op,
              ": expected counts to be a 1-D int64 [E] tensor of rows per expert, got a ",
              counts_E.dim(), "-D ", counts_E.scalar_type(), " tensor of shape ",
              counts_E.sym_sizes());
  TORCH_CHECK(counts_E.device() == a_Nk.device(), op, ": expected counts on a's device (",
              a_Nk.device(), "), got ", counts_E.device());
}

}  // namespace

void check_grouped_mm(const at::Tensor& a_Nk, const at::Tensor& b, const at::Tensor& counts_E,
                      bool trans_b) {
  constexpr const char* op = "grouped_mm";
  check_common(op, a_Nk, counts_E);
  const char* layout = trans_b ? "[E, n, k]" : "[E, k, n]";
  TORCH_CHECK(b.dim() == 3, op, ": expected b to be a 3-D ", layout,
              " tensor of per-expert weights, got ", b.dim(), "-D with shape ", b.sym_sizes());
  TORCH_CHECK(b.sym_size(0) == counts_E.sym_size(0), op,
              ": expected one count per expert of b (E = ", b.sym_size(0),
              "), got counts of shape ", counts_E.sym_sizes());
  const auto& b_k = trans_b ? b.sym_size(2) : b.sym_size(1);
  TORCH_CHECK(b_k == a_Nk.sym_size(1), op, ": expected b of shape ", layout, " with k = ",
              a_Nk.sym_size(1), " (a's columns), got ", b.sym_sizes());
  TORCH_CHECK(b.scalar_type() == a_Nk.scalar_type(), op, ": expected b to have a's dtype ",
              a_Nk.scalar_type(), ", got ", b.scalar_type());
  TORCH_CHECK(b.device() == a_Nk.device(), op, ": expected b on a's device (", a_Nk.device(),
              "), got ", b.device());
}

void check_grouped_mm_weight_grad(const at::Tensor& a_Nk, const at::Tensor& grad_Nn,
                                  const at::Tensor& counts_E) {
  constexpr const char* op = "grouped_mm_weight_grad";
  check_common(op, a_Nk, counts_E);
  TORCH_CHECK(grad_Nn.dim() == 2 && grad_Nn.sym_size(0) == a_Nk.sym_size(0), op,
              ": expected grad_out to be a 2-D [N, n] tensor with N = ", a_Nk.sym_size(0),
              " (a's rows), got shape ", grad_Nn.sym_sizes());
  TORCH_CHECK(grad_Nn.scalar_type() == a_Nk.scalar_type(), op,
              ": expected grad_out to have a's dtype ", a_Nk.scalar_type(), ", got ",
              grad_Nn.scalar_type());
  TORCH_CHECK(grad_Nn.device() == a_Nk.device(), op, ": expected grad_out on a's device (",
              a_Nk.device(), "), got ", grad_Nn.device());
}

}  // namespace detail

namespace {

// Row offsets of the experts' blocks (E + 1 entries), checked against the rows of `a`.
std::vector<int64_t> host_offsets(const char* op, const at::Tensor& counts_E, int64_t num_rows) {
  const at::Tensor counts = counts_E.contiguous();
  const int64_t* c = counts.data_ptr<int64_t>();
  std::vector<int64_t> offsets(counts.size(0) + 1, 0);
  for (int64_t e = 0; e < counts.size(0); ++e) {
    TORCH_CHECK(c[e] >= 0, op, ": expected counts >= 0, got counts[", e, "] = ", c[e]);
    offsets[e + 1] = offsets[e] + c[e];
  }
  TORCH_CHECK(offsets.back() <= num_rows, op, ": the counts sum to ", offsets.back(),
              " rows but a has only ", num_rows);
  return offsets;
}

// Worker threads of at::parallel_for do not inherit the caller's dispatch state: without
// this guard, the products on them would go through autograd again (and refuse out=).
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

struct Piece {
  int64_t expert, begin, length;  // rows [begin, begin + length)
};

// Cuts the grouped rows [0, total) into one chunk of equal size per thread, each chunk a
// list of pieces that stay inside one expert's block: every thread multiplies the same
// number of rows whatever the balance between experts (Note [CPU grouped products]).
// Threads worth using for `work` multiply-adds: waking a thread costs about as much as
// a million of them, so small products stay on the calling thread.
int64_t useful_threads(int64_t work, int64_t parts) {
  constexpr int64_t kWorkPerThread = int64_t{1} << 20;
  return std::max<int64_t>(1, std::min({int64_t{at::get_num_threads()}, parts,
                                        work / kWorkPerThread}));
}

// Whether the experts' products are large enough for BLAS's own threads to run each one
// at full speed: then one product after another beats splitting them over threads.
bool large_products(const std::vector<int64_t>& offsets, int64_t row_work) {
  constexpr int64_t kLargeProduct = int64_t{1} << 24;  // multiply-adds
  int64_t nonempty = 0;
  for (size_t e = 0; e + 1 < offsets.size(); ++e) nonempty += offsets[e + 1] > offsets[e];
  return nonempty > 0 && offsets.back() * row_work / nonempty >= kLargeProduct;
}

std::vector<std::vector<Piece>> balanced_row_chunks(const std::vector<int64_t>& offsets,
                                                    int64_t row_work) {
  const int64_t total = offsets.back();
  const int64_t chunks = useful_threads(total * row_work, total);
  std::vector<std::vector<Piece>> result(chunks);
  int64_t e = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = total * c / chunks, hi = total * (c + 1) / chunks;
    for (int64_t row = lo; row < hi;) {
      while (offsets[e + 1] <= row) ++e;  // skips experts without rows
      const int64_t end = std::min(hi, offsets[e + 1]);
      result[c].push_back({e, row, end - row});
      row = end;
    }
  }
  return result;
}

at::Tensor grouped_mm_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                          const at::Tensor& counts_E, bool trans_b) {
  detail::check_grouped_mm(a_in, b_in, counts_E, trans_b);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const int64_t N = a.size(0);
  const int64_t n = trans_b ? b.size(1) : b.size(2);
  const auto offsets = host_offsets("grouped_mm", counts_E, N);
  at::Tensor out = at::empty({N, n}, a.options());
  out.narrow(0, offsets.back(), N - offsets.back()).zero_();
  if (offsets.back() == 0) return out;

  if (large_products(offsets, a.size(1) * n)) {
    for (int64_t e = 0; e + 1 < static_cast<int64_t>(offsets.size()); ++e) {
      const int64_t rows = offsets[e + 1] - offsets[e];
      if (rows == 0) continue;
      auto dst = out.narrow(0, offsets[e], rows);
      at::mm_out(dst, a.narrow(0, offsets[e], rows), trans_b ? b[e].t() : b[e]);
    }
    return out;
  }
  const auto chunks = balanced_row_chunks(offsets, a.size(1) * n);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t lo, int64_t hi) {
    const BelowAutograd below_autograd;
    for (int64_t c = lo; c < hi; ++c) {
      for (const Piece& p : chunks[c]) {
        const at::Tensor w = trans_b ? b[p.expert].t() : b[p.expert];
        auto dst = out.narrow(0, p.begin, p.length);
        at::mm_out(dst, a.narrow(0, p.begin, p.length), w);
      }
    }
  });
  return out;
}

at::Tensor grouped_mm_weight_grad_cpu(const at::Tensor& a_in, const at::Tensor& grad_in,
                                      const at::Tensor& counts_E) {
  detail::check_grouped_mm_weight_grad(a_in, grad_in, counts_E);
  const at::Tensor a = a_in.contiguous();
  const at::Tensor g = grad_in.contiguous();
  const int64_t E = counts_E.size(0), k = a.size(1), n = g.size(1);
  const auto offsets = host_offsets("grouped_mm_weight_grad", counts_E, a.size(0));
  at::Tensor out = at::empty({E, k, n}, a.options());
  for (int64_t e = 0; e < E; ++e) {
    if (offsets[e + 1] == offsets[e]) out[e].zero_();  // an expert without rows
  }

  if (large_products(offsets, k * n)) {
    for (int64_t e = 0; e < E; ++e) {
      const int64_t rows = offsets[e + 1] - offsets[e];
      if (rows == 0) continue;
      auto dst = out[e];
      at::mm_out(dst, a.narrow(0, offsets[e], rows).t(), g.narrow(0, offsets[e], rows));
    }
    return out;
  }
  // Thread j computes rows [k j / P, k (j+1) / P) of every expert's [k, n] gradient: the
  // same share of every product, so the threads are balanced whatever the counts.
  const int64_t chunks = useful_threads(offsets.back() * k * n, k);
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    const BelowAutograd below_autograd;
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t k0 = k * c / chunks, k1 = k * (c + 1) / chunks;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t rows = offsets[e + 1] - offsets[e];
        if (rows == 0 || k1 == k0) continue;
        const at::Tensor a_e = a.narrow(0, offsets[e], rows).narrow(1, k0, k1 - k0);
        auto dst = out[e].narrow(0, k0, k1 - k0);
        at::mm_out(dst, a_e.t(), g.narrow(0, offsets[e], rows));
      }
    }
  });
  return out;
}

at::Tensor grouped_mm_meta(const at::Tensor& a, const at::Tensor& b, const at::Tensor& counts_E,
                           bool trans_b) {
  detail::check_grouped_mm(a, b, counts_E, trans_b);
  return at::empty_symint({a.sym_size(0), trans_b ? b.sym_size(1) : b.sym_size(2)}, a.options());
}

at::Tensor grouped_mm_weight_grad_meta(const at::Tensor& a, const at::Tensor& grad,
                                       const at::Tensor& counts_E) {
  detail::check_grouped_mm_weight_grad(a, grad, counts_E);
  return at::empty_symint({counts_E.sym_size(0), a.sym_size(1), grad.sym_size(1)}, a.options());
}

// ---- autograd ------------------------------------------------------------------------------

at::Tensor call_grouped_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& counts,
                           bool trans_b) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("switchyard::grouped_mm", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, bool)>();
  return op.call(a, b, counts, trans_b);
}

// d(a @ b_e) = g @ b_e^T for a, a_e^T @ g for b_e (and its transpose when trans_b).
class GroupedMmFunction : public torch::autograd::Function<GroupedMmFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& a,
                            const at::Tensor& b, const at::Tensor& counts, bool trans_b) {
    ctx->save_for_backward({a, b, counts});
    ctx->saved_data["trans_b"] = trans_b;
    const at::AutoDispatchBelowADInplaceOrView guard;
    return call_grouped_mm(a, b, counts, trans_b);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &a = saved[0], &b = saved[1], &counts = saved[2];
    const bool trans_b = ctx->saved_data["trans_b"].toBool();
    const at::Tensor& g = grads[0];
    at::Tensor grad_a, grad_b;
    if (ctx->needs_input_grad(0)) grad_a = grouped_mm(g, b, counts, !trans_b);
    if (ctx->needs_input_grad(1)) {
      grad_b = trans_b ? grouped_mm_weight_grad(g, a, counts)
                       : grouped_mm_weight_grad(a, g, counts);
    }
    return {grad_a, grad_b, at::Tensor(), at::Tensor()};
  }
};

at::Tensor grouped_mm_autograd(const at::Tensor& a, const at::Tensor& b, const at::Tensor& counts,
                               bool trans_b) {
  return GroupedMmFunction::apply(a, b, counts, trans_b);
}

}  // namespace

at::Tensor grouped_mm(const at::Tensor& a_Nk, const at::Tensor& b_Ekn, const at::Tensor& counts_E,
                      bool trans_b) {
  return call_grouped_mm(a_Nk, b_Ekn, counts_E, trans_b);
}

at::Tensor grouped_mm_weight_grad(const at::Tensor& a_Nk, const at::Tensor& grad_Nn,
                                  const at::Tensor& counts_E) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("switchyard::grouped_mm_weight_grad", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&)>();
  return op.call(a_Nk, grad_Nn, counts_E);
}

}  // namespace switchyard::ops

TORCH_LIBRARY_IMPL(switchyard, CPU, m) {
  m.impl("grouped_mm", &switchyard::ops::grouped_mm_cpu);
  m.impl("grouped_mm_weight_grad", &switchyard::ops::grouped_mm_weight_grad_cpu);
}

TORCH_LIBRARY_IMPL(switchyard, Meta, m) {
  m.impl("grouped_mm", &switchyard::ops::grouped_mm_meta);
  m.impl("grouped_mm_weight_grad", &switchyard::ops::grouped_mm_weight_grad_meta);
}

TORCH_LIBRARY_IMPL(switchyard, Autograd, m) {
  m.impl("grouped_mm", &switchyard::ops::grouped_mm_autograd);
}
