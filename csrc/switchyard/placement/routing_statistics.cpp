// RoutingStatistics (routing_statistics.h): recording by matrix products (Note [Routing
// statistics by matrix products]) and the one-buffer reduction.
#include "switchyard/placement/routing_statistics.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <utility>

#include "switchyard/nn/moe_layer.h"

namespace switchyard::placement {

struct RoutingStatistics::State {
  std::vector<int64_t> experts;
  int64_t num_ranks = 1;
  int64_t rank = 0;
  double decay = 0.9;
  int64_t steps = 0;
  std::vector<LayerStatistics> layers;
  std::vector<at::Tensor> step_tokens;  // [E] this step's counts, folded by end_step()
  std::vector<LayerInfo> info;
  c10::Device device = c10::Device(c10::kCPU);
  bool device_fixed = false;
  // Note [Transitions between MoE layers]: the last recorded layer and its M [T,E].
  int64_t prev_layer = -1;
  at::Tensor prev_M;
};

namespace {

using State = RoutingStatistics::State;

at::TensorOptions f64(c10::Device device) { return at::TensorOptions().dtype(at::kDouble).device(device); }

void allocate(State& s) {
  const int64_t L = static_cast<int64_t>(s.experts.size());
  s.layers.assign(L, LayerStatistics{});
  s.step_tokens.assign(L, at::Tensor());
  for (int64_t l = 0; l < L; ++l) {
    const int64_t E = s.experts[l];
    LayerStatistics& st = s.layers[l];
    st.num_experts = E;
    st.tokens = at::zeros({E}, f64(s.device));
    st.tokens_ema = at::zeros({E}, f64(s.device));
    st.traffic = at::zeros({s.num_ranks, E}, f64(s.device));
    st.coactivation = at::zeros({E, E}, f64(s.device));
    if (l + 1 < L) st.transitions = at::zeros({E, s.experts[l + 1]}, f64(s.device));
    s.step_tokens[l] = at::zeros({E}, f64(s.device));
  }
  s.steps = 0;
  s.prev_layer = -1;
  s.prev_M = at::Tensor();
}

void move_to(State& s, c10::Device device) {
  auto mv = [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device);
  };
  for (LayerStatistics& st : s.layers) {
    mv(st.tokens), mv(st.tokens_ema), mv(st.traffic), mv(st.coactivation), mv(st.transitions);
  }
  for (at::Tensor& t : s.step_tokens) mv(t);
  mv(s.prev_M);
  s.device = device;
}

void check_layer(const State& s, int64_t l, const char* where) {
  TORCH_CHECK_INDEX(l >= 0 && l < static_cast<int64_t>(s.layers.size()), "RoutingStatistics.", where,
                    ": layer ", l, " out of range [0, ", s.layers.size(), ")");
}

void record_into(State& s, int64_t l, const at::Tensor& topk_experts_TK, const at::Tensor& kept_TK) {
  check_layer(s, l, "record");
  TORCH_CHECK_VALUE(topk_experts_TK.dim() == 2 && topk_experts_TK.scalar_type() == at::kLong,
                    "RoutingStatistics.record: expected topk_experts of shape [T, K] int64, got ",
                    topk_experts_TK.sizes(), " ", topk_experts_TK.scalar_type());
  TORCH_CHECK_VALUE(kept_TK.sizes() == topk_experts_TK.sizes() && kept_TK.scalar_type() == at::kBool,
                    "RoutingStatistics.record: expected kept of shape ", topk_experts_TK.sizes(),
                    " bool (like topk_experts), got ", kept_TK.sizes(), " ", kept_TK.scalar_type());
  const torch::NoGradGuard no_grad;
  if (!s.device_fixed) {
    if (topk_experts_TK.device() != s.device) move_to(s, topk_experts_TK.device());
    s.device_fixed = true;
  }
  const at::Tensor topk = topk_experts_TK.to(s.device);
  const at::Tensor kept = kept_TK.to(s.device);
  const int64_t E = s.experts[l], T = topk.size(0);

  // 1. M [T,E]: 1 where the token's slot for expert e is kept; every other slot lands in a
  //    spare column E (Note [Routing statistics by matrix products]).
  const at::Tensor counted = kept.logical_and(topk >= 0).logical_and(topk < E);
  const at::Tensor column = at::where(counted, topk, topk.new_full({}, E));
  const at::Tensor M = at::zeros({T, E + 1}, f64(s.device))
                           .scatter_add_(1, column, at::ones(topk.sizes(), f64(s.device)))
                           .narrow(1, 0, E);
  // 2. Per-expert counts: totals, this step's (for the EMA) and this rank's traffic row.
  LayerStatistics& st = s.layers[l];
  const at::Tensor counts = M.sum(0);
  st.tokens.add_(counts);
  s.step_tokens[l].add_(counts);
  st.traffic.select(0, s.rank).add_(counts);
  // 3. Co-activation: pairs of experts a token chose together.
  st.coactivation.addmm_(M.t(), M);
  st.coactivation.diagonal().zero_();
  // 4. Transitions from the previous MoE layer (Note [Transitions between MoE layers]).
  if (l > 0) {
    if (s.prev_layer == l - 1 && s.prev_M.defined() && s.prev_M.size(0) == T) {
      s.layers[l - 1].transitions.addmm_(s.prev_M.t(), M);
    } else {
      s.layers[l - 1].transitions_skipped += 1;
    }
  }
  s.prev_layer = l;
  s.prev_M = M;
}

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kCPU, at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

RoutingStatistics::RoutingStatistics(std::vector<int64_t> experts_per_layer, int64_t num_source_ranks,
                                     int64_t source_rank, double ema_decay)
    : state_(std::make_shared<State>()) {
  TORCH_CHECK_VALUE(!experts_per_layer.empty(), "RoutingStatistics: expected at least one MoE layer "
                    "in experts_per_layer, got none");
  for (size_t l = 0; l < experts_per_layer.size(); ++l) {
    TORCH_CHECK_VALUE(experts_per_layer[l] >= 1, "RoutingStatistics: experts_per_layer[", l,
                      "] must be >= 1, got ", experts_per_layer[l]);
  }
  TORCH_CHECK_VALUE(num_source_ranks >= 1, "RoutingStatistics: num_source_ranks must be >= 1, got ",
                    num_source_ranks);
  TORCH_CHECK_VALUE(source_rank >= 0 && source_rank < num_source_ranks, "RoutingStatistics: "
                    "source_rank must be in [0, ", num_source_ranks, "), got ", source_rank);
  TORCH_CHECK_VALUE(ema_decay >= 0.0 && ema_decay < 1.0, "RoutingStatistics: ema_decay must be in "
                    "[0, 1), got ", ema_decay);
  State& s = *state_;
  s.experts = std::move(experts_per_layer);
  s.num_ranks = num_source_ranks;
  s.rank = source_rank;
  s.decay = ema_decay;
  s.info.assign(s.experts.size(), LayerInfo{});
  allocate(s);
}

RoutingStatistics::RoutingStatistics(std::shared_ptr<State> state) : state_(std::move(state)) {}
RoutingStatistics::~RoutingStatistics() = default;
RoutingStatistics::RoutingStatistics(RoutingStatistics&&) noexcept = default;
RoutingStatistics& RoutingStatistics::operator=(RoutingStatistics&&) noexcept = default;

RoutingStatistics RoutingStatistics::clone() const {
  auto s = std::make_shared<State>(*state_);
  auto cl = [](at::Tensor& t) {
    if (t.defined()) t = t.clone();
  };
  for (LayerStatistics& st : s->layers) {
    cl(st.tokens), cl(st.tokens_ema), cl(st.traffic), cl(st.coactivation), cl(st.transitions);
  }
  for (at::Tensor& t : s->step_tokens) cl(t);
  s->prev_layer = -1;
  s->prev_M = at::Tensor();
  return RoutingStatistics(std::move(s));
}

void RoutingStatistics::record(int64_t layer, const at::Tensor& topk_experts_TK, const at::Tensor& kept_TK) {
  record_into(*state_, layer, topk_experts_TK, kept_TK);
}

void RoutingStatistics::end_step() {
  State& s = *state_;
  const torch::NoGradGuard no_grad;
  for (size_t l = 0; l < s.layers.size(); ++l) {
    at::Tensor& ema = s.layers[l].tokens_ema;
    if (s.steps == 0) {
      ema.copy_(s.step_tokens[l]);
    } else {
      ema.mul_(s.decay).add_(s.step_tokens[l], 1.0 - s.decay);
    }
    s.step_tokens[l].zero_();
  }
  s.steps += 1;
  // A step boundary is also a micro-batch boundary.
  s.prev_layer = -1;
  s.prev_M = at::Tensor();
}

void RoutingStatistics::reset() {
  State& s = *state_;
  const torch::NoGradGuard no_grad;
  for (LayerStatistics& st : s.layers) {
    st.tokens.zero_(), st.tokens_ema.zero_(), st.traffic.zero_(), st.coactivation.zero_();
    if (st.transitions.defined()) st.transitions.zero_();
    st.transitions_skipped = 0;
  }
  for (at::Tensor& t : s.step_tokens) t.zero_();
  s.steps = 0;
  s.prev_layer = -1;
  s.prev_M = at::Tensor();
}

int64_t RoutingStatistics::steps() const { return state_->steps; }
int64_t RoutingStatistics::num_layers() const { return static_cast<int64_t>(state_->layers.size()); }
int64_t RoutingStatistics::num_source_ranks() const { return state_->num_ranks; }
int64_t RoutingStatistics::source_rank() const { return state_->rank; }
double RoutingStatistics::ema_decay() const { return state_->decay; }
const std::vector<int64_t>& RoutingStatistics::experts_per_layer() const { return state_->experts; }
const std::vector<LayerInfo>& RoutingStatistics::layer_info() const { return state_->info; }
c10::Device RoutingStatistics::device() const { return state_->device; }

const LayerStatistics& RoutingStatistics::layer(int64_t l) const {
  check_layer(*state_, l, "layer");
  return state_->layers[l];
}

double RoutingStatistics::total_tokens(int64_t l) const {
  return layer(l).tokens.sum().item<double>();
}

RoutingStatistics RoutingStatistics::reduced(const comm::Communicator& group) const {
  const State& s = *state_;
  // Flat layout: per layer tokens, tokens_ema, traffic, coactivation, transitions, skipped;
  // then steps and steps^2 (equal steps on every rank <=> sum = n*steps and sum of squares
  // = n*steps^2, which every rank can check for itself).
  std::vector<at::Tensor> parts;
  for (const LayerStatistics& st : s.layers) {
    parts.push_back(st.tokens.reshape(-1));
    parts.push_back(st.tokens_ema.reshape(-1));
    parts.push_back(st.traffic.reshape(-1));
    parts.push_back(st.coactivation.reshape(-1));
    if (st.transitions.defined()) parts.push_back(st.transitions.reshape(-1));
    parts.push_back(at::full({1}, static_cast<double>(st.transitions_skipped), f64(s.device)));
  }
  const double steps = static_cast<double>(s.steps);
  parts.push_back(at::tensor(std::vector<double>{steps, steps * steps}, f64(c10::kCPU)).to(s.device));
  at::Tensor flat = at::cat(parts).contiguous();
  comm::Communicator g = group;  // a handle (shared state); all_reduce is non-const
  g.all_reduce(flat);

  const at::Tensor tail = flat.narrow(0, flat.size(0) - 2, 2).cpu();
  const double n = group.size(), sum = tail[0].item<double>(), sum_sq = tail[1].item<double>();
  TORCH_CHECK_VALUE(sum == n * steps && sum_sq == n * steps * steps, "RoutingStatistics.reduced: "
                    "the ranks of ", group.describe(), " recorded different numbers of steps "
                    "(this rank ", s.steps, ", mean ", sum / n, "); call end_step() on every rank alike");

  auto out = std::make_shared<State>();
  out->experts = s.experts;
  out->num_ranks = s.num_ranks;
  out->rank = 0;
  out->decay = s.decay;
  out->info = s.info;
  out->device = s.device;
  out->device_fixed = s.device_fixed;
  allocate(*out);
  out->steps = s.steps;
  int64_t offset = 0;
  auto take = [&](const at::Tensor& like) {
    at::Tensor t = flat.narrow(0, offset, like.numel()).view(like.sizes()).clone();
    offset += like.numel();
    return t;
  };
  const at::Tensor skipped_all = flat.cpu();
  for (size_t l = 0; l < s.layers.size(); ++l) {
    const LayerStatistics& src = s.layers[l];
    LayerStatistics& dst = out->layers[l];
    dst.tokens = take(src.tokens);
    dst.tokens_ema = take(src.tokens_ema);
    dst.traffic = take(src.traffic);
    dst.coactivation = take(src.coactivation);
    if (src.transitions.defined()) dst.transitions = take(src.transitions);
    dst.transitions_skipped = static_cast<int64_t>(skipped_all[offset].item<double>());
    offset += 1;
  }
  return RoutingStatistics(std::move(out));
}

std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> find_moe_layers(
    torch::nn::Module& module) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> found;
  if (dynamic_cast<nn::MoELayerImpl*>(&module) != nullptr) {
    found.emplace_back("", nullptr);  // the module itself; attach() handles it by reference
  }
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    if (std::dynamic_pointer_cast<nn::MoELayerImpl>(item.value())) found.emplace_back(item.key(), item.value());
  }
  return found;
}

int64_t RoutingStatistics::attach(torch::nn::Module& module) {
  State& s = *state_;
  const auto found = find_moe_layers(module);
  const int64_t L = static_cast<int64_t>(s.experts.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(found.size()) == L, "RoutingStatistics.attach: the model has ",
                    found.size(), " MoE layers but the statistics were built for ", L,
                    " (experts_per_layer)");
  std::vector<nn::MoELayerImpl*> layers;
  for (const auto& [name, ptr] : found) {
    layers.push_back(ptr ? dynamic_cast<nn::MoELayerImpl*>(ptr.get()) : dynamic_cast<nn::MoELayerImpl*>(&module));
  }
  for (int64_t l = 0; l < L; ++l) {
    const nn::MoELayerOptions& o = layers[l]->options();
    TORCH_CHECK_VALUE(o.num_experts == s.experts[l], "RoutingStatistics.attach: MoE layer ", l, " (",
                      found[l].first.empty() ? "the module" : found[l].first, ") has ", o.num_experts,
                      " experts but experts_per_layer[", l, "] = ", s.experts[l]);
  }
  const std::weak_ptr<State> weak = state_;
  for (int64_t l = 0; l < L; ++l) {
    const nn::MoELayerOptions& o = layers[l]->options();
    s.info[l] = LayerInfo{found[l].first, o.top_k, o.d_model, o.router};
    layers[l]->set_routing_observer([weak, l](const at::Tensor& topk, const at::Tensor& kept) {
      if (const std::shared_ptr<State> state = weak.lock()) record_into(*state, l, topk, kept);
    });
  }
  return L;
}

void RoutingStatistics::detach(torch::nn::Module& module) {
  if (auto* self = dynamic_cast<nn::MoELayerImpl*>(&module)) self->set_routing_observer(nullptr);
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    if (auto layer = std::dynamic_pointer_cast<nn::MoELayerImpl>(item.value())) layer->set_routing_observer(nullptr);
  }
}

PlacementProblem RoutingStatistics::placement_problem(int64_t l, bool use_ema) const {
  const LayerStatistics& st = layer(l);
  // With the per-step moving average as the load, traffic and co-activation (totals) become
  // per-step means too, so that the objective's terms share one unit.
  const bool per_step = use_ema && state_->steps > 0;
  const double scale = per_step ? 1.0 / static_cast<double>(state_->steps) : 1.0;
  PlacementProblem p;
  p.load = to_vector(per_step ? st.tokens_ema : st.tokens);
  p.num_ranks = state_->num_ranks;
  p.traffic = to_vector(st.traffic * scale);
  p.coactivation = to_vector(st.coactivation * scale);
  return p;
}

void RoutingStatistics::restore(int64_t l, LayerStatistics statistics) {
  State& s = *state_;
  check_layer(s, l, "restore");
  const int64_t E = s.experts[l];
  auto check = [&](const at::Tensor& t, std::vector<int64_t> shape, const char* name) {
    TORCH_CHECK_VALUE(t.defined() && t.sizes() == c10::IntArrayRef(shape), "RoutingStatistics.restore: "
                      "layer ", l, " ", name, ": expected shape ", c10::IntArrayRef(shape), ", got ",
                      t.defined() ? t.sizes() : c10::IntArrayRef{});
  };
  TORCH_CHECK_VALUE(statistics.num_experts == E, "RoutingStatistics.restore: layer ", l, " has ", E,
                    " experts, got statistics of ", statistics.num_experts);
  check(statistics.tokens, {E}, "tokens");
  check(statistics.tokens_ema, {E}, "tokens_ema");
  check(statistics.traffic, {s.num_ranks, E}, "traffic");
  check(statistics.coactivation, {E, E}, "coactivation");
  if (l + 1 < num_layers()) check(statistics.transitions, {E, s.experts[l + 1]}, "transitions");
  auto conv = [&](at::Tensor& t) {
    if (t.defined()) t = t.to(s.device, at::kDouble).contiguous();
  };
  conv(statistics.tokens), conv(statistics.tokens_ema), conv(statistics.traffic);
  conv(statistics.coactivation), conv(statistics.transitions);
  if (l + 1 == num_layers()) statistics.transitions = at::Tensor();
  s.layers[l] = std::move(statistics);
}

void RoutingStatistics::set_steps(int64_t steps) {
  TORCH_CHECK_VALUE(steps >= 0, "RoutingStatistics.set_steps: steps must be >= 0, got ", steps);
  state_->steps = steps;
}

void RoutingStatistics::set_layer_info(std::vector<LayerInfo> info) {
  TORCH_CHECK_VALUE(info.size() == state_->layers.size(), "RoutingStatistics.set_layer_info: expected ",
                    state_->layers.size(), " entries, got ", info.size());
  state_->info = std::move(info);
}

}  // namespace switchyard::placement
