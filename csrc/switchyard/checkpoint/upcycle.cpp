#include "switchyard/checkpoint/upcycle.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/utils.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "switchyard/checkpoint/checkpoint.h"
#include "switchyard/comm/process_groups.h"
#include "switchyard/common/error.h"
#include "switchyard/nn/moe_transformer.h"
#include "switchyard/sharding/sharded_engine.h"
#include "switchyard/sharding/sharding_options.h"

namespace switchyard::checkpoint {
namespace {

std::string mlp(int64_t layer) { return "model.layers." + std::to_string(layer) + ".mlp."; }

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

// The source state, with every tensor accounted for: take() marks it used, finish() throws
// on anything left over -- a converter must never drop weights without a word.
class Source {
 public:
  explicit Source(const StateDict& s) : s_(s) {}
  at::Tensor take(const std::string& name, std::vector<int64_t> shape) {
    auto it = s_.find(name);
    SWITCHYARD_CHECK(it != s_.end(), "upcycle: the source has no tensor '", name, "'");
    SWITCHYARD_CHECK(it->second.sizes().vec() == shape, "upcycle: source tensor '", name, "' has shape ",
                     shape_str(it->second.sizes()), " but the source config says ", shape_str(shape));
    used_.insert(name);
    return it->second.detach();
  }
  bool has(const std::string& name) const { return s_.count(name) > 0; }
  std::vector<std::string> finish() const {
    std::vector<std::string> left;
    for (const auto& [name, t] : s_) {
      if (!used_.count(name)) left.push_back(name);
    }
    SWITCHYARD_CHECK(left.empty(), "upcycle: ", left.size(), " source tensor(s) would be dropped, e.g. '",
                     left.empty() ? "" : left.front(), "' (the source does not match its config)");
    return {used_.begin(), used_.end()};
  }

 private:
  const StateDict& s_;
  std::set<std::string> used_;
};

// Backbone fields that shape tensors or the function; the target must keep them.
void check_same_backbone(const nn::MoETransformerOptions& a, const nn::MoETransformerOptions& b) {
#define SY_SAME(field)                                                                                  \
  SWITCHYARD_CHECK(a.field == b.field, "upcycle: model." #field " is ", b.field, " in the target but ", \
                   a.field, " in the source; upcycling keeps the attention, embeddings and norms")
  SY_SAME(vocab_size);
  SY_SAME(d_model);
  SY_SAME(n_layers);
  SY_SAME(n_heads);
  SY_SAME(rope_theta);
  SY_SAME(norm_eps);
  SY_SAME(tie_embeddings);
  SY_SAME(qkv_bias);
#undef SY_SAME
  SWITCHYARD_CHECK(a.kv_heads() == b.kv_heads(), "upcycle: model.n_kv_heads is ", b.kv_heads(),
                   " in the target but ", a.kv_heads(), " in the source");
}

// Embeddings, attention, norms, head: copied as they are.
void copy_backbone(Source& src, StateDict& out, const nn::MoETransformerOptions& o) {
  const int64_t d = o.d_model, hd = o.head_dim();
  auto copy = [&](const std::string& n, std::vector<int64_t> shape) { out[n] = src.take(n, std::move(shape)).clone(); };
  copy("model.embed_tokens.weight", {o.vocab_size, d});
  for (int64_t i = 0; i < o.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    copy(p + "self_attn.q_proj.weight", {o.n_heads * hd, d});
    copy(p + "self_attn.k_proj.weight", {o.kv_heads() * hd, d});
    copy(p + "self_attn.v_proj.weight", {o.kv_heads() * hd, d});
    copy(p + "self_attn.o_proj.weight", {d, o.n_heads * hd});
    if (o.qkv_bias) {  // Qwen2's attention
      copy(p + "self_attn.q_proj.bias", {o.n_heads * hd});
      copy(p + "self_attn.k_proj.bias", {o.kv_heads() * hd});
      copy(p + "self_attn.v_proj.bias", {o.kv_heads() * hd});
    }
    copy(p + "input_layernorm.weight", {d});
    copy(p + "post_attention_layernorm.weight", {d});
  }
  copy("model.norm.weight", {d});
  if (!o.tie_embeddings) {
    copy("lm_head.weight", {o.vocab_size, d});
  } else if (src.has("lm_head.weight")) {
    src.take("lm_head.weight", {o.vocab_size, d});  // the tied copy some checkpoints store
  }
}

at::Tensor normal_like(const at::Tensor& like, at::IntArrayRef shape, double mean, double std, at::Generator& g) {
  return at::normal(mean, std, shape, g, like.options());
}

at::Tensor with_noise(const at::Tensor& w, double noise, at::Generator& g) {
  if (noise <= 0) return w;
  const double std = w.to(at::kDouble).std().item<double>();
  return w + normal_like(w, w.sizes(), 0.0, noise * std, g);
}

// Why a dense -> MoE upcycling is (or is not) exact at initialisation.
std::pair<bool, std::string> dense_preservation(const nn::MoETransformerOptions& to, const UpcycleOptions& o,
                                                int64_t segments) {
  const nn::MoELayerOptions& m = to.moe;
  std::vector<std::string> breaks;
  if (o.noise > 0) breaks.push_back("noise > 0 perturbs the copies");
  if (o.method == "drop" && o.drop_fraction > 0) breaks.push_back("drop re-draws part of every expert");
  if (m.router != "topk") breaks.push_back("expert-choice routing gives a token zero or several experts");
  if (!m.renormalize && m.top_k < m.num_router_outputs())
    breaks.push_back("without moe.renormalize the selected weights do not sum to 1");
  if (m.num_null_experts + m.num_zero_experts + m.num_copy_experts + m.num_constant_experts > 0)
    breaks.push_back("null / zero-computation experts can take a token's slots");
  if (m.capacity_factor > 0) breaks.push_back("moe.capacity_factor can drop tokens");
  if (segments > 1) {
    // Segments sum to the dense FFN only when every token takes each segment once with equal
    // weight: a zero router (all logits tie, ties go to the lowest ids, which hold one copy of
    // every segment per m consecutive experts) and top_k a multiple of m.
    if (o.router_std != 0) breaks.push_back("fine_grained needs router_std = 0 (equal weights on the segments)");
    if (m.top_k % segments != 0 || m.num_experts % segments != 0)
      breaks.push_back("fine_grained needs moe.top_k and moe.num_experts to be multiples of the " +
                       std::to_string(segments) + " segments");
    if (m.num_groups > 1) breaks.push_back("group-limited routing changes which tied experts are taken");
  }
  if (breaks.empty()) {
    return {true, segments > 1 ? "every token takes top_k/m full copies of the m segments with weight 1/top_k each, "
                                 "and the down projections are scaled by m: the segments sum to the dense FFN"
                               : "every routed expert is the dense FFN and the selected weights sum to 1"};
  }
  std::string why;
  for (size_t i = 0; i < breaks.size(); ++i) why += (i ? "; " : "") + breaks[i];
  return {false, why};
}

}  // namespace

UpcycleResult upcycle_dense(const StateDict& source, const nn::MoETransformerOptions& from,
                            const nn::MoETransformerOptions& to, const UpcycleOptions& o) {
  SWITCHYARD_CHECK(!from.has_moe_layers(), "upcycle: the source has MoE layers; a dense -> MoE method ('", o.method,
                   "') needs a dense source (for more experts use expert upcycling: the same command with an "
                   "MoE source)");
  SWITCHYARD_CHECK(to.has_moe_layers(), "upcycle: the target config has no MoE layer (model.moe_layer_freq 0)");
  SWITCHYARD_CHECK(o.method == "sparse" || o.method == "drop" || o.method == "fine_grained",
                   "upcycle: unknown method '", o.method, "' (sparse, drop, fine_grained)");
  SWITCHYARD_CHECK(o.noise >= 0 && o.drop_fraction >= 0 && o.drop_fraction <= 1 && o.router_std >= 0,
                   "upcycle: noise and router_std must be >= 0 and drop_fraction in [0, 1]");
  check_same_backbone(from, to);
  const nn::MoELayerOptions& m = to.moe;
  SWITCHYARD_CHECK(m.activation == "swiglu", "upcycle: moe.activation is '", m.activation,
                   "' but the dense FFN is SwiGLU; the experts must be too");
  const int64_t d = from.d_model, F = from.ffn_hidden, E = m.num_experts, f = m.ffn_hidden;
  int64_t segments = 1;
  if (o.method == "fine_grained") {
    SWITCHYARD_CHECK(f < F && F % f == 0, "upcycle: fine_grained cuts the dense FFN (model.ffn_hidden ", F,
                     " in the source) into segments of moe.ffn_hidden = ", f, " neurons; it must divide ", F,
                     " and be smaller");
    segments = F / f;
  } else {
    SWITCHYARD_CHECK(f == F, "upcycle: method ", o.method, " copies the dense FFN (model.ffn_hidden ", F,
                     " in the source) into every expert, so moe.ffn_hidden must be ", F, ", not ", f,
                     " (fine_grained cuts it into segments instead)");
  }
  const bool shared = m.num_shared_experts > 0;
  if (shared) {
    SWITCHYARD_CHECK(m.resolved_shared_ffn_hidden() == F, "upcycle: the shared expert is the dense FFN, so its "
                     "hidden size (moe.shared_ffn_hidden, or num_shared_experts * ffn_hidden) must be ", F,
                     ", not ", m.resolved_shared_ffn_hidden());
    SWITCHYARD_CHECK(o.shared_fraction >= 0 && o.shared_fraction <= 1, "upcycle: shared_fraction must be in [0, 1]");
  }
  const double alpha = shared ? o.shared_fraction : 0.0;
  // What the routed part must carry, undoing the layer's own scaling of it.
  const double routed_scale = (1.0 - alpha) * static_cast<double>(segments) / m.scaling_factor;

  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(o.seed));
  Source src(source);
  UpcycleResult r;
  StateDict& out = r.state;
  const torch::NoGradGuard no_grad;
  copy_backbone(src, out, from);
  for (int64_t i = 0; i < from.n_layers; ++i) {
    const std::string p = mlp(i);
    const at::Tensor wg = src.take(p + "gate_proj.weight", {F, d});
    const at::Tensor wu = src.take(p + "up_proj.weight", {F, d});
    const at::Tensor wd = src.take(p + "down_proj.weight", {d, F});
    if (!to.is_moe_layer(i)) {
      SWITCHYARD_CHECK(to.ffn_hidden == F, "upcycle: block ", i, " stays dense but model.ffn_hidden changes from ", F,
                       " to ", to.ffn_hidden);
      out[p + "gate_proj.weight"] = wg.clone();
      out[p + "up_proj.weight"] = wu.clone();
      out[p + "down_proj.weight"] = wd.clone();
      continue;
    }
    std::vector<at::Tensor> gates, ups, downs;
    // Drop-Upcycling draws re-initialised neurons from the dense weights' statistics: once
    // per layer, not per expert.
    double g_mean = 0, g_std = 0, u_mean = 0, u_std = 0, d_mean = 0, d_std = 0;
    if (o.method == "drop" && o.drop_fraction > 0) {
      g_mean = wg.mean().item<double>(), g_std = wg.std().item<double>();
      u_mean = wu.mean().item<double>(), u_std = wu.std().item<double>();
      d_mean = wd.mean().item<double>() * routed_scale, d_std = wd.std().item<double>() * routed_scale;
    }
    for (int64_t e = 0; e < E; ++e) {
      const int64_t s = e % segments;
      at::Tensor g = wg.narrow(0, s * f, f).t(), u = wu.narrow(0, s * f, f).t();  // [d, f]
      at::Tensor dn = (wd.narrow(1, s * f, f) * routed_scale).t();                 // [f, d]
      g = with_noise(g, o.noise, gen);
      u = with_noise(u, o.noise, gen);
      dn = with_noise(dn, o.noise, gen);
      if (o.method == "drop" && o.drop_fraction > 0) {
        // Drop-Upcycling: re-draw a random share of this expert's neurons from the dense
        // weights' statistics, so copies start diverse and train apart.
        const int64_t k = static_cast<int64_t>(std::llround(o.drop_fraction * static_cast<double>(f)));
        const at::Tensor idx = at::randperm(f, gen, at::TensorOptions().dtype(at::kLong)).narrow(0, 0, k);
        g = g.clone();
        u = u.clone();
        dn = dn.clone();
        g.index_copy_(1, idx, normal_like(g, {d, k}, g_mean, g_std, gen));
        u.index_copy_(1, idx, normal_like(u, {d, k}, u_mean, u_std, gen));
        dn.index_copy_(0, idx, normal_like(dn, {k, d}, d_mean, d_std, gen));
      }
      gates.push_back(g);
      ups.push_back(u);
      downs.push_back(dn);
    }
    out[p + "experts.gate_proj"] = at::stack(gates).contiguous();
    out[p + "experts.up_proj"] = at::stack(ups).contiguous();
    out[p + "experts.down_proj"] = at::stack(downs).contiguous();
    const int64_t outputs = m.num_router_outputs();
    out[p + "router.weight"] = o.router_std > 0 ? normal_like(wg, {outputs, d}, 0.0, o.router_std, gen)
                                                : at::zeros({outputs, d}, wg.options());
    if (m.has_selection_bias()) out[p + "router.selection_bias"] = at::zeros({outputs}, wg.options());
    if (shared) {
      // A sigmoid gate starts at sigmoid(0) = 1/2 with zero weights: the shared expert's down
      // projection carries twice its share to make up for it.
      const double s = alpha * (m.shared_expert_gate ? 2.0 : 1.0);
      out[p + "shared_experts.gate_proj.weight"] = wg.clone();
      out[p + "shared_experts.up_proj.weight"] = wu.clone();
      out[p + "shared_experts.down_proj.weight"] = wd * s;
      if (m.shared_expert_gate) out[p + "shared_expert_gate.weight"] = at::zeros({1, d}, wg.options());
    }
  }
  r.consumed = src.finish();
  std::tie(r.preserves_function, r.reason) = dense_preservation(to, o, segments);
  return r;
}

UpcycleResult upcycle_experts(const StateDict& source, const nn::MoETransformerOptions& from,
                              const nn::MoETransformerOptions& to, const UpcycleOptions& o) {
  SWITCHYARD_CHECK(from.has_moe_layers() && to.has_moe_layers(), "upcycle: expert upcycling needs MoE layers in "
                   "both the source and the target");
  check_same_backbone(from, to);
  const nn::MoELayerOptions &a = from.moe, &b = to.moe;
  const int64_t E = a.num_experts;
  SWITCHYARD_CHECK(b.num_experts % E == 0 && b.num_experts > E, "upcycle: moe.num_experts must grow by an integer "
                   "factor: the source has ", E, " experts, the target ", b.num_experts);
  const int64_t m = b.num_experts / E;
  SWITCHYARD_CHECK(b.top_k == a.top_k, "upcycle: expert upcycling holds moe.top_k fixed (", a.top_k,
                   " in the source), so the cost per token stays; the target has ", b.top_k);
#define SY_SAME(field)                                                                                    \
  SWITCHYARD_CHECK(a.field == b.field, "upcycle: moe." #field " is ", b.field, " in the target but ", a.field, \
                   " in the source; expert upcycling changes only moe.num_experts (and the routing groups)")
  SY_SAME(ffn_hidden);
  SY_SAME(activation);
  SY_SAME(num_shared_experts);
  SY_SAME(shared_expert_gate);
  SY_SAME(num_null_experts);
  SY_SAME(num_zero_experts);
  SY_SAME(num_copy_experts);
  SY_SAME(num_constant_experts);
#undef SY_SAME
  SWITCHYARD_CHECK(a.resolved_shared_ffn_hidden() == b.resolved_shared_ffn_hidden(),
                   "upcycle: the shared expert's hidden size changes");
  for (int64_t i = 0; i < from.n_layers; ++i) {
    SWITCHYARD_CHECK(from.is_moe_layer(i) == to.is_moe_layer(i), "upcycle: block ", i, " is ",
                     from.is_moe_layer(i) ? "MoE" : "dense", " in the source but not in the target (model.moe_layer_freq"
                     " / model.first_k_dense must stay)");
  }
  const int64_t d = from.d_model, f = a.ffn_hidden, extra = a.num_router_outputs() - E;
  // Without renormalisation a softmax over m copies gives each 1/m of the source's weight.
  const double down_scale = (a.score_func == "softmax" && !b.renormalize) ? static_cast<double>(m) : 1.0;

  // Which source expert each target expert copies, per MoE layer.
  int64_t moe_layers = 0;
  for (int64_t i = 0; i < from.n_layers; ++i) moe_layers += from.is_moe_layer(i) ? 1 : 0;
  const bool uniform = o.extra_copies.empty();
  SWITCHYARD_CHECK(uniform || static_cast<int64_t>(o.extra_copies.size()) == moe_layers, "upcycle: extra_copies "
                   "lists ", o.extra_copies.size(), " layers but the model has ", moe_layers, " MoE layers");
  std::vector<std::vector<int64_t>> order(static_cast<size_t>(moe_layers));
  for (int64_t j = 0; j < moe_layers; ++j) {
    for (int64_t e = 0; e < E; ++e) order[j].push_back(e);
    for (int64_t c = 1; c < m && uniform; ++c) {
      for (int64_t e = 0; e < E; ++e) order[j].push_back(e);
    }
    if (!uniform) {
      for (int64_t e : o.extra_copies[j]) {
        SWITCHYARD_CHECK(e >= 0 && e < E, "upcycle: extra_copies names expert ", e, " of a ", E, "-expert layer");
        order[j].push_back(e);
      }
      SWITCHYARD_CHECK(static_cast<int64_t>(order[j].size()) == m * E, "upcycle: extra_copies of MoE layer ", j,
                       " gives ", order[j].size() - E, " copies; the target needs ", (m - 1) * E);
    }
  }
  auto gather_rows = [&](const at::Tensor& t, int64_t j) {
    return t.index_select(0, at::tensor(order[j], at::TensorOptions().dtype(at::kLong)));
  };

  at::Generator gen = at::detail::createCPUGenerator(static_cast<uint64_t>(o.seed));
  Source src(source);
  UpcycleResult r;
  StateDict& out = r.state;
  const torch::NoGradGuard no_grad;
  copy_backbone(src, out, from);
  auto copy = [&](const std::string& n, std::vector<int64_t> shape) { out[n] = src.take(n, std::move(shape)).clone(); };
  int64_t j = -1;  // MoE layer index
  for (int64_t i = 0; i < from.n_layers; ++i) {
    const std::string p = mlp(i);
    if (!from.is_moe_layer(i)) {
      copy(p + "gate_proj.weight", {from.ffn_hidden, d});
      copy(p + "up_proj.weight", {from.ffn_hidden, d});
      copy(p + "down_proj.weight", {d, from.ffn_hidden});
      continue;
    }
    ++j;
    // Target expert k copies source expert order[j][k]: the originals first (0 .. E-1), then
    // the copies (uniformly: copy c of every expert is block c).
    for (const char* w : {"gate_proj", "up_proj", "down_proj"}) {
      const bool down = std::string(w) == "down_proj";
      const at::Tensor t = src.take(p + "experts." + w, down ? std::vector<int64_t>{E, f, d} : std::vector<int64_t>{E, d, f});
      at::Tensor all = gather_rows(down ? t * down_scale : t, j);
      if (o.noise > 0) all.narrow(0, E, (m - 1) * E).copy_(with_noise(all.narrow(0, E, (m - 1) * E), o.noise, gen));
      out[p + "experts." + w] = all.contiguous();
    }
    const at::Tensor router = src.take(p + "router.weight", {E + extra, d});
    out[p + "router.weight"] = at::cat({gather_rows(router.narrow(0, 0, E), j), router.narrow(0, E, extra)}).contiguous();
    if (b.has_selection_bias()) {
      at::Tensor bias = a.has_selection_bias() ? src.take(p + "router.selection_bias", {E + extra})
                                               : at::zeros({E + extra}, router.options());
      out[p + "router.selection_bias"] = at::cat({gather_rows(bias.narrow(0, 0, E), j), bias.narrow(0, E, extra)}).contiguous();
    } else if (a.has_selection_bias()) {
      src.take(p + "router.selection_bias", {E + extra});  // the target routes without one
    }
    if (a.num_shared_experts > 0) {
      const int64_t fs = a.resolved_shared_ffn_hidden();
      copy(p + "shared_experts.gate_proj.weight", {fs, d});
      copy(p + "shared_experts.up_proj.weight", {fs, d});
      copy(p + "shared_experts.down_proj.weight", {d, fs});
      if (a.shared_expert_gate) copy(p + "shared_expert_gate.weight", {1, d});
    }
  }
  r.consumed = src.finish();
  // Ties between the m copies of an expert go to the lowest id, i.e. copy 0 (block 0). The
  // source's choice is reproduced exactly when a token takes one expert (top_k = 1), or when
  // routing is limited to one group and each group is one block of copies.
  std::vector<std::string> breaks;
  if (o.noise > 0) breaks.push_back("noise > 0 perturbs the copies");
  if (b.router != "topk") breaks.push_back("expert-choice routing changes with the number of experts");
  if (extra > 0) breaks.push_back("null / zero-computation experts keep one router row while experts get m");
  if (b.capacity_factor > 0) breaks.push_back("moe.capacity_factor shrinks each expert's capacity m-fold");
  const bool one_group_per_copy = uniform && a.num_groups == 1 && b.num_groups == m && b.topk_groups == 1;
  if (b.top_k > 1 && !one_group_per_copy)
    breaks.push_back(uniform ? "with top_k > 1 a token can take several copies of one expert; set moe.num_groups = " +
                                   std::to_string(m) + " and moe.topk_groups = 1 (one group per block of copies) to "
                                   "keep the source's choice"
                             : "with top_k > 1 and utility-chosen copies a token can take several copies of one "
                               "expert (no block of copies to limit routing to)");
  if (b.top_k == 1 && b.num_groups != 1 && !one_group_per_copy)
    breaks.push_back("group-limited routing reorders the tied copies");
  r.preserves_function = breaks.empty();
  for (size_t k = 0; k < breaks.size(); ++k) r.reason += (k ? "; " : "") + breaks[k];
  if (breaks.empty()) r.reason = "every token takes copy 0 of the experts the source chose, with the source's weights";
  return r;
}

UpcycleResult upcycle(const StateDict& source, const nn::MoETransformerOptions& from,
                      const nn::MoETransformerOptions& to, const UpcycleOptions& options) {
  return from.has_moe_layers() ? upcycle_experts(source, from, to, options) : upcycle_dense(source, from, to, options);
}

namespace {

// write_initial_checkpoint on a one-rank group `self`.
std::string write_initial_checkpoint_on(comm::Communicator self, const StateDict& state, const config::Config& config,
                                        const std::string& out_root, const std::map<std::string, std::string>& metadata) {
  nn::MoETransformer model(nn::transformer_options_from_config(config));
  {
    const torch::NoGradGuard no_grad;
    std::set<std::string> seen;
    std::set<const c10::TensorImpl*> filled;  // a tied parameter is filled under one of its names
    auto fill = [&](const std::string& name, at::Tensor& t) {
      if (!state.count(name) && filled.count(t.unsafeGetTensorImpl())) return;
      filled.insert(t.unsafeGetTensorImpl());
      auto it = state.find(name);
      SWITCHYARD_CHECK(it != state.end(), "write_initial_checkpoint: no tensor for '", name, "' of the model");
      SWITCHYARD_CHECK(it->second.sizes() == t.sizes(), "write_initial_checkpoint: '", name, "' has shape ",
                       shape_str(it->second.sizes()), ", the model's is ", shape_str(t.sizes()));
      t.copy_(it->second);
      seen.insert(name);
    };
    for (auto& item : model->named_parameters()) fill(item.key(), item.value());
    for (auto& item : model->named_buffers()) fill(item.key(), item.value());
    for (const auto& [name, t] : state) {
      SWITCHYARD_CHECK(seen.count(name), "write_initial_checkpoint: '", name, "' is not a tensor of the model");
    }
  }
  // Written by one process whatever job the config describes: the checkpoint reshards on
  // load, and its config.yaml keeps the target's own parallel: section.
  config::Config one_rank = config;
  one_rank.parallel.expert_parallel = 1;
  one_rank.parallel.data_parallel = 0;
  sharding::ShardedEngine engine(model.ptr(), comm::ProcessGroups::create(one_rank, self),
                                 sharding::sharding_options_from_config(one_rank));
  SaveOptions save;
  save.keep_last = 0;
  save.config_yaml = config.to_yaml();
  save.metadata = metadata;
  return checkpoint::save(out_root, 0, engine, save);
}

}  // namespace

std::string write_initial_checkpoint(const StateDict& state, const config::Config& config, const std::string& out_root,
                                     const std::map<std::string, std::string>& metadata) {
  // Rank 0 writes it alone (on a group of its own); the others wait for it.
  comm::Communicator world = comm::Communicator::world();
  const std::string dir = (std::filesystem::path(out_root) / step_directory_name(0)).string();
  if (world.size() > 1) {
    comm::Communicator self = world.split(static_cast<int>(world.rank()), 0, "initial-checkpoint");
    if (world.rank() == 0) write_initial_checkpoint_on(self, state, config, out_root, metadata);
    world.barrier();
    return dir;
  }
  write_initial_checkpoint_on(world, state, config, out_root, metadata);
  return dir;
}

UpcycleResult upcycle_checkpoint(const std::string& source, const config::Config& target, const std::string& out_root,
                                 const UpcycleOptions& options) {
  const std::string path = resolve_checkpoint(source);
  const config::Config from_cfg = config::load_config_string(read_config_yaml(path), path + "/config.yaml");
  UpcycleResult r = upcycle(read_full_state(path), nn::transformer_options_from_config(from_cfg),
                            nn::transformer_options_from_config(target), options);
  const nlohmann::json meta = {{"source", path}, {"method", options.method}, {"noise", options.noise},
                               {"preserves_function", r.preserves_function}, {"reason", r.reason}};
  write_initial_checkpoint(r.state, target, out_root, {{"upcycled", meta.dump()}});
  return r;
}

}  // namespace switchyard::checkpoint
