#include "switchyard/sharding/sharded_engine.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/utils.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>
#include <sstream>

#include "switchyard/comm/string_gather.h"
#include "switchyard/dispatch/expert_parallel.h"
#include "switchyard/dispatch/expert_placement.h"
#include "switchyard/nn/moe_layer.h"
#include "switchyard/sharding/adamw.h"

namespace switchyard::sharding {
namespace {

constexpr double kInitialLossScale = 65536.0;
constexpr int64_t kLossScaleGrowthInterval = 2000;

int64_t elem(at::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

// "name [2, 3] Float" per dense parameter and "name (expert)" per expert one, unit by unit:
// what every rank must agree on.
std::vector<std::string> parameter_signature(nn::UnitSequence& seq) {
  std::vector<std::string> lines;
  for (int64_t i = 0; i < seq.num_units(); ++i) {
    lines.push_back("unit " + std::to_string(i) + " '" + seq.unit_name(i) + "'");
    for (const nn::UnitParameter& p : seq.unit_parameters(i)) {
      std::ostringstream s;
      s << "  " << p.name;
      if (p.expert) s << " (expert)";
      else s << " " << p.tensor.sizes() << " " << p.tensor.scalar_type();
      lines.push_back(s.str());
    }
  }
  return lines;
}

std::string join(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

ShardedEngine::ShardedEngine(std::shared_ptr<torch::nn::Module> model, comm::ProcessGroups groups,
                             ShardingOptions options)
    : module_(std::move(model)), groups_(std::move(groups)), options_(std::move(options)) {
  TORCH_CHECK_VALUE(module_ != nullptr, "ShardedEngine: expected a model, got null");
  seq_ = dynamic_cast<nn::UnitSequence*>(module_.get());
  TORCH_CHECK_TYPE(seq_ != nullptr, "ShardedEngine: the model (", module_->name(),
                   ") does not implement switchyard::nn::UnitSequence, so the engine cannot run it "
                   "unit by unit; use a model that does (e.g. switchyard's MoETransformer)");
  options_.validate();
  loss_scale_ = options_.precision == "fp16"
                    ? (options_.loss_scale > 0 ? options_.loss_scale : kInitialLossScale)
                    : 1.0;
  allocator_ = CountingAllocator::create(module_->parameters().empty()
                                             ? c10::DeviceType::CPU
                                             : module_->parameters().front().device().type());
  parallelize_experts();
  check_same_parameters();
  build_units();
}

std::unique_ptr<ShardedEngine> ShardedEngine::from_config(std::shared_ptr<torch::nn::Module> model,
                                                         const config::Config& config,
                                                         const comm::Communicator& world) {
  ShardingOptions options = sharding_options_from_config(config);
  comm::ProcessGroups groups = comm::ProcessGroups::create(config, world);
  return std::make_unique<ShardedEngine>(std::move(model), std::move(groups), std::move(options));
}

void ShardedEngine::parallelize_experts() {
  const int64_t EP = groups_.expert_parallel_size;
  TORCH_CHECK_VALUE(groups_.expert_parallel.size() == EP,
                    "ShardedEngine: groups.expert_parallel has ", groups_.expert_parallel.size(),
                    " ranks but expert_parallel_size is ", EP);
  if (EP == 1) return;
  for (const auto& m : module_->modules(/*include_self=*/true)) {
    auto layer = std::dynamic_pointer_cast<nn::MoELayerImpl>(m);
    if (!layer || layer->expert_parallelism()) continue;
    const int64_t E = layer->options().num_experts;
    TORCH_CHECK_VALUE(E >= EP, "ShardedEngine: an MoE layer has ", E,
                      " experts, fewer than parallel.expert_parallel = ", EP,
                      " ranks to place them on");
    layer->enable_expert_parallel(std::make_shared<dispatch::ExpertParallel>(
        groups_.expert_parallel, dispatch::ExpertPlacement::contiguous(E, EP), options_.speculation));
  }
}

std::vector<std::pair<std::string, std::shared_ptr<nn::MoELayerImpl>>> ShardedEngine::moe_layers() const {
  std::vector<std::pair<std::string, std::shared_ptr<nn::MoELayerImpl>>> layers;
  for (const auto& item : module_->named_modules("", /*include_self=*/true)) {
    if (auto layer = std::dynamic_pointer_cast<nn::MoELayerImpl>(item.value())) layers.emplace_back(item.key(), layer);
  }
  return layers;
}

std::shared_ptr<nn::MoELayerImpl> ShardedEngine::owner_layer(
    const std::vector<std::pair<std::string, std::shared_ptr<nn::MoELayerImpl>>>& layers,
    const std::string& expert_param) {
  std::shared_ptr<nn::MoELayerImpl> owner;
  size_t best = 0;
  for (const auto& [path, layer] : layers) {
    const bool prefix = path.empty() || (expert_param.size() > path.size() &&
                                         expert_param.compare(0, path.size(), path) == 0 &&
                                         expert_param[path.size()] == '.');
    if (prefix && (!owner || path.size() >= best)) owner = layer, best = path.size();
  }
  return owner;
}

void ShardedEngine::update_selection_biases() {
  // Auxiliary-loss-free balancing needs the load of the whole job, not of this rank's
  // tokens: with local loads, every rank would move its copy of the (replicated) bias
  // differently and the routers would drift apart.
  comm::Communicator world = groups_.world;
  for (const auto& m : module_->modules(/*include_self=*/true)) {
    auto layer = std::dynamic_pointer_cast<nn::MoELayerImpl>(m);
    if (!layer || layer->options().bias_update_rate <= 0) continue;
    at::Tensor load = layer->pending_load().clone();
    if (world.size() > 1) world.all_reduce(load);
    layer->update_selection_bias(load);
  }
}

void ShardedEngine::check_same_parameters() const {
  // Collective over the world: gather every rank's signature and compare with rank 0's.
  comm::Communicator world = groups_.world;
  const std::string mine = join(parameter_signature(*seq_));
  const std::vector<std::string> texts = comm::all_gather_strings(world, mine);
  const std::vector<std::string> ref = split_lines(texts[0]);
  for (int r = 1; r < world.size(); ++r) {
    const std::vector<std::string> other = split_lines(texts[r]);
    if (other == ref) continue;
    size_t k = 0;
    while (k < ref.size() && k < other.size() && ref[k] == other[k]) ++k;
    const std::string a = k < ref.size() ? ref[k] : "(nothing: its list ends here)";
    const std::string b = k < other.size() ? other[k] : "(nothing: its list ends here)";
    // Find the unit header above the difference, for context.
    std::string unit;
    for (size_t j = std::min(k, ref.size()); j-- > 0;) {
      if (ref[j].rfind("unit ", 0) == 0) {
        unit = ref[j];
        break;
      }
    }
    TORCH_CHECK_VALUE(false, "ShardedEngine: the model's parameter set differs across ranks "
                      "(every rank must build the same model): at entry ", k, " (in ", unit,
                      ") rank 0 has '", a, "' but rank ", r, " has '", b, "'");
  }
}

void ShardedEngine::build_units() {
  num_units_ = seq_->num_units();
  TORCH_CHECK_VALUE(num_units_ >= 1, "ShardedEngine: the model has no units");
  const FlatUnitDtypes dtypes{options_.compute_dtype(), options_.master_dtype(), options_.reduce_dtype()};
  const torch::NoGradGuard no_grad;
  flats_used_by_.assign(num_units_, {});
  unit_dense_.assign(num_units_, {});
  unit_experts_.assign(num_units_, {});
  std::map<std::string, ParamRef> dense_at;
  std::map<std::string, size_t> expert_at;
  std::set<std::string> listed;
  flats_.reserve(num_units_);
  for (int64_t i = 0; i < num_units_; ++i) {
    const std::vector<nn::UnitParameter> params = seq_->unit_parameters(i);
    std::vector<FlatParam> fresh;
    std::vector<std::string> fresh_names;
    for (const nn::UnitParameter& p : params) {
      listed.insert(p.name);
      if (p.expert) {
        if (expert_at.count(p.name)) continue;
        ExpertState e;
        e.name = p.name;
        e.param = p.tensor;
        e.master_is_param = p.tensor.scalar_type() == dtypes.master && dtypes.compute == dtypes.master;
        e.master = e.master_is_param ? p.tensor : p.tensor.detach().to(dtypes.master).clone();
        if (p.tensor.scalar_type() != dtypes.compute) e.param.set_data(p.tensor.detach().to(dtypes.compute));
        e.grad = at::zeros(p.tensor.sizes(), p.tensor.options().dtype(dtypes.reduce));
        e.exp_avg = at::zeros_like(e.master);
        e.exp_avg_sq = at::zeros_like(e.master);
        expert_at[p.name] = experts_.size();
        experts_.push_back(std::move(e));
      } else if (!dense_at.count(p.name) &&
                 std::find(fresh_names.begin(), fresh_names.end(), p.name) == fresh_names.end()) {
        FlatParam f;
        f.name = p.name;
        f.param = p.tensor;
        fresh.push_back(std::move(f));
        fresh_names.push_back(p.name);
      }
    }
    if (!fresh.empty()) {
      const size_t index = flats_.size();
      flats_.emplace_back(seq_->unit_name(i), i, std::move(fresh), groups_.data_parallel,
                          options_.shard_dense, dtypes, allocator_);
      last_use_.push_back(i);
      for (size_t j = 0; j < fresh_names.size(); ++j) dense_at[fresh_names[j]] = ParamRef{index, j};
    }
    for (const nn::UnitParameter& p : params) {
      if (p.expert) {
        const size_t e = expert_at.at(p.name);
        if (std::find(unit_experts_[i].begin(), unit_experts_[i].end(), e) == unit_experts_[i].end())
          unit_experts_[i].push_back(e);
        continue;
      }
      const ParamRef ref = dense_at.at(p.name);
      bool seen = false;
      for (const ParamRef& r : unit_dense_[i]) seen = seen || (r.flat == ref.flat && r.index == ref.index);
      if (!seen) unit_dense_[i].push_back(ref);
      auto& used = flats_used_by_[i];
      if (std::find(used.begin(), used.end(), ref.flat) == used.end()) used.push_back(ref.flat);
      last_use_[ref.flat] = std::max(last_use_[ref.flat], i);
    }
  }
  // Every trainable parameter must belong to a unit, or it would silently never train.
  std::vector<std::string> missing;
  // A tied parameter (lm_head.weight = model.embed_tokens.weight) is listed under one of its
  // names: compare tensors, not names.
  std::set<const c10::TensorImpl*> listed_tensors;
  for (int64_t i = 0; i < num_units_; ++i) {
    for (const nn::UnitParameter& p : seq_->unit_parameters(i)) listed_tensors.insert(p.tensor.unsafeGetTensorImpl());
  }
  for (const auto& item : module_->named_parameters(/*recurse=*/true)) {
    if (item.value().requires_grad() && !listed.count(item.key()) &&
        !listed_tensors.count(item.value().unsafeGetTensorImpl())) {
      missing.push_back(item.key());
    }
  }
  TORCH_CHECK_VALUE(missing.empty(), "ShardedEngine: ", missing.size(), " parameter(s) of the model "
                    "belong to no unit (unit_parameters never lists them), e.g. '", missing.empty() ? "" : missing.front(),
                    "'; they would never be trained");
  // Floating buffers follow the compute dtype, as the parameters did.
  for (auto& item : module_->named_buffers(/*recurse=*/true)) {
    at::Tensor b = item.value();
    if (b.defined() && at::isFloatingType(b.scalar_type()) && b.scalar_type() != dtypes.compute)
      b.set_data(b.to(dtypes.compute));
  }
}

void ShardedEngine::track_transient() {
  int64_t bytes = 0;
  int units = 0;
  for (const FlatUnit& f : flats_) {
    if (!f.sharded()) continue;
    const int64_t g = f.gathered_bytes();
    units += g > 0 ? 1 : 0;
    bytes += g + f.full_grad_bytes();
  }
  transient_peak_ = std::max(transient_peak_, bytes);
  pending_.max_units_gathered = std::max(pending_.max_units_gathered, units);
}

void ShardedEngine::gather_for(int64_t unit, bool prefetch, int direction) {
  for (size_t f : flats_used_by_[unit]) pending_.bytes_gathered += flats_[f].start_gather();
  for (size_t f : flats_used_by_[unit]) flats_[f].wait_gather();
  const int64_t next = unit + direction;
  if (prefetch && next >= 0 && next < num_units_) {
    for (size_t f : flats_used_by_[next]) pending_.bytes_gathered += flats_[f].start_gather();
  }
  track_transient();
}

std::pair<at::Tensor, at::Tensor> ShardedEngine::forward_backward(const nn::UnitBatch& batch) {
  module_->train();
  pending_.stats.clear();  // a step reports its last micro-batch's statistics
  std::vector<UnitRun> runs(num_units_);
  std::vector<at::Tensor> prev;
  const auto forward_start = std::chrono::steady_clock::now();
  // 1. Forward, unit by unit.
  for (int64_t i = 0; i < num_units_; ++i) {
    gather_for(i, options_.prefetch, +1);
    UnitRun& run = runs[i];
    for (const at::Tensor& t : prev) {
      if (!t.defined()) {
        run.inputs.emplace_back();
        continue;
      }
      at::Tensor d = t.detach();
      if (at::isFloatingType(d.scalar_type())) d.requires_grad_(true);
      run.inputs.push_back(d);
    }
    nn::UnitStep s = seq_->run_unit(i, run.inputs, batch);
    run.outputs = std::move(s.outputs);
    run.aux_loss = s.aux_loss;
    for (auto& [name, value] : s.stats) pending_.stats.emplace_back(seq_->unit_name(i) + "." + name, value);
    for (size_t f : flats_used_by_[i]) {
      if (last_use_[f] == i) flats_[f].release();
    }
    track_transient();
    prev = run.outputs;
  }
  pending_.forward_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - forward_start).count();
  const std::vector<at::Tensor>& last = runs.back().outputs;
  TORCH_CHECK(last.size() == 1 && last[0].defined() && last[0].dim() == 0,
              "ShardedEngine: the last unit ('", seq_->unit_name(num_units_ - 1),
              "') must return exactly one output, the scalar loss; got ", last.size(), " output(s)");
  const at::Tensor loss = last[0];
  at::Tensor aux = at::zeros({}, loss.options().dtype(at::kDouble));
  for (const UnitRun& r : runs) {
    if (r.aux_loss.defined()) aux = aux + r.aux_loss.detach().to(at::kDouble);
  }

  // 2-4. Backward in reverse, one unit's graph at a time.
  std::vector<at::Tensor> grads_out{at::full_like(loss, loss_scale_)};
  std::vector<size_t> reducing;
  for (int64_t i = num_units_ - 1; i >= 0; --i) {
    gather_for(i, options_.prefetch, -1);
    UnitRun& run = runs[i];
    std::vector<at::Tensor> roots, root_grads, wrt;
    for (size_t k = 0; k < run.outputs.size() && k < grads_out.size(); ++k) {
      if (run.outputs[k].defined() && run.outputs[k].requires_grad() && grads_out[k].defined()) {
        roots.push_back(run.outputs[k]);
        root_grads.push_back(grads_out[k]);
      }
    }
    if (run.aux_loss.defined() && run.aux_loss.requires_grad()) {
      roots.push_back(run.aux_loss);
      root_grads.push_back(at::full_like(run.aux_loss, loss_scale_));
    }
    std::vector<size_t> input_slot;
    for (size_t k = 0; k < run.inputs.size(); ++k) {
      if (run.inputs[k].defined() && run.inputs[k].requires_grad()) {
        input_slot.push_back(k);
        wrt.push_back(run.inputs[k]);
      }
    }
    for (const ParamRef& r : unit_dense_[i]) wrt.push_back(flats_[r.flat].params()[r.index].param);
    for (size_t e : unit_experts_[i]) wrt.push_back(experts_[e].param);
    std::vector<at::Tensor> grads(wrt.size());
    if (!roots.empty() && !wrt.empty()) {
      grads = torch::autograd::grad(roots, wrt, root_grads, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    }
    grads_out.assign(run.inputs.size(), at::Tensor());
    size_t g = 0;
    for (size_t k : input_slot) grads_out[k] = grads[g++];
    for (const ParamRef& r : unit_dense_[i]) {
      if (grads[g].defined()) flats_[r.flat].add_grad(r.index, grads[g]);
      ++g;
    }
    {
      const torch::NoGradGuard no_grad;
      for (size_t e : unit_experts_[i]) {
        if (grads[g].defined()) experts_[e].grad.add_(grads[g]);
        ++g;
      }
    }
    grads.clear();
    run = UnitRun{};  // this unit's graph is gone
    track_transient();
    for (size_t f : flats_used_by_[i]) {
      if (flats_[f].owner() != i) continue;
      // Every use of flat f is behind us: reduce its gradient, release its parameters. With
      // prefetch, one reduction stays in flight while the next unit computes.
      for (size_t p : reducing) flats_[p].finish_reduce();
      reducing.clear();
      pending_.bytes_reduced += flats_[f].start_reduce();
      flats_[f].release();
      if (options_.prefetch) {
        reducing.push_back(f);
      } else {
        flats_[f].finish_reduce();  // strictly one unit's buffers at a time
      }
      track_transient();
    }
  }
  for (size_t p : reducing) flats_[p].finish_reduce();
  track_transient();
  for (FlatUnit& f : flats_) f.unbind_views();  // every graph of this micro-batch is gone

  const at::Tensor l = loss.detach().to(at::kDouble);
  loss_sum_ = loss_sum_.defined() ? loss_sum_ + l : l;
  aux_sum_ = aux_sum_.defined() ? aux_sum_ + aux : aux;
  ++micro_batches_;
  return {loss.detach(), aux};
}

StepResult ShardedEngine::step(const std::vector<nn::UnitBatch>& micro_batches, double lr) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(micro_batches.size()) == options_.grad_accum,
                    "ShardedEngine.step: expected train.grad_accum = ", options_.grad_accum,
                    " micro-batches, got ", micro_batches.size());
  const auto t0 = std::chrono::steady_clock::now();
  allocator_->counter().reset_peak();
  transient_peak_ = 0;
  for (const nn::UnitBatch& b : micro_batches) forward_backward(b);
  StepResult r = apply_step(lr);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

StepResult ShardedEngine::apply_step(double lr) {
  TORCH_CHECK(micro_batches_ > 0, "ShardedEngine.apply_step: no micro-batch was run since the last step");
  const torch::NoGradGuard no_grad;
  StepResult r = std::move(pending_);
  pending_ = StepResult{};
  // The routing loads of this step's forwards are final whether or not the update below
  // is skipped (non-finite gradients), so the balancing bias moves either way.
  update_selection_biases();
  const int W = groups_.world.size();
  // 5. Expert gradients over the replicas of the same experts.
  comm::Communicator& edp = groups_.expert_data_parallel;
  if (edp.size() > 1) {
    for (ExpertState& e : experts_) {
      edp.all_reduce(e.grad, comm::ReduceOp::kSum);
      r.bytes_expert_reduced += 2 * (edp.size() - 1) * e.grad.nbytes() / edp.size();
    }
  }
  const double scale = 1.0 / (static_cast<double>(W) * micro_batches_ * loss_scale_);
  // 6. Global norm: each dense shard once (each rank its own), each expert once (replica 0).
  at::Tensor sums = at::zeros({3}, at::kDouble);
  const bool dp_root = groups_.data_parallel.rank() == 0;
  for (FlatUnit& f : flats_) {
    f.grad_shard().mul_(scale);
    // A sharded unit's shards are disjoint; a replicated one's gradient is on every rank.
    if (f.sharded() || dp_root) sums[0] += f.grad_shard().to(at::kDouble).pow(2).sum();
  }
  for (ExpertState& e : experts_) {
    e.grad.mul_(scale);
    if (edp.rank() == 0) sums[0] += e.grad.to(at::kDouble).pow(2).sum();
  }
  sums[1] = loss_sum_.defined() ? loss_sum_.cpu() : at::zeros({}, at::kDouble);
  sums[2] = aux_sum_.defined() ? aux_sum_.cpu() : at::zeros({}, at::kDouble);
  const at::Tensor device_sums = flats_.empty() ? sums : sums.to(flats_.front().grad_shard().device());
  groups_.world.all_reduce(device_sums, comm::ReduceOp::kSum);
  const at::Tensor host = device_sums.cpu();
  const double denom = static_cast<double>(W) * micro_batches_;
  r.grad_norm = std::sqrt(host[0].item<double>());
  r.loss = host[1].item<double>() / denom;
  r.aux_loss = host[2].item<double>() / denom;
  r.loss_scale = loss_scale_;
  loss_sum_ = aux_sum_ = at::Tensor();
  micro_batches_ = 0;
  auto zero_grads = [&] {
    for (FlatUnit& f : flats_) f.grad_shard().zero_();
    for (ExpertState& e : experts_) e.grad.zero_();
  };
  if (!std::isfinite(r.grad_norm)) {
    r.skipped = true;
    if (options_.dynamic_loss_scale()) {
      loss_scale_ /= 2;
      clean_steps_ = 0;
    }
    zero_grads();
    return r;
  }
  // 7. Clip and update.
  if (options_.grad_clip > 0) {
    const double coef = options_.grad_clip / (r.grad_norm + 1e-6);
    if (coef < 1.0) {
      r.clip_coef = coef;
      r.clipped = true;
    }
  }
  ++step_;
  AdamWStep h;
  h.lr = lr;
  h.beta1 = options_.beta1;
  h.beta2 = options_.beta2;
  h.eps = options_.eps;
  h.weight_decay = options_.weight_decay;
  h.step = step_;
  h.grad_scale = r.clip_coef;
  for (FlatUnit& f : flats_) {
    adamw_update(f.master_shard(), f.grad_shard(), f.exp_avg(), f.exp_avg_sq(), h, f.decay_ranges(), false);
    f.publish_master();  // 8.
  }
  for (ExpertState& e : experts_) {
    adamw_update(e.master, e.grad, e.exp_avg, e.exp_avg_sq, h, {}, e.master.dim() >= 2);
    if (!e.master_is_param) e.param.copy_(e.master);
  }
  if (options_.dynamic_loss_scale() && ++clean_steps_ >= kLossScaleGrowthInterval) {
    loss_scale_ *= 2;
    clean_steps_ = 0;
  }
  zero_grads();
  return r;
}

double ShardedEngine::eval_loss(const std::vector<nn::UnitBatch>& micro_batches) {
  const bool was_training = module_->is_training();
  module_->eval();
  const torch::NoGradGuard no_grad;
  const int64_t step_bytes = pending_.bytes_gathered;  // evaluation traffic is not a step's
  double total = 0;
  for (const nn::UnitBatch& batch : micro_batches) {
    std::vector<at::Tensor> prev;
    for (int64_t i = 0; i < num_units_; ++i) {
      gather_for(i, options_.prefetch, +1);
      // The aux losses (load balancing, z-loss) are training regularisers, not part of
      // the quantity validated: adding them would bias every MoE-vs-dense comparison.
      nn::UnitStep s = seq_->run_unit(i, prev, batch);
      for (size_t f : flats_used_by_[i]) {
        if (last_use_[f] == i) flats_[f].release();
      }
      prev = std::move(s.outputs);
    }
    total += prev.at(0).item<double>();
  }
  for (FlatUnit& f : flats_) f.unbind_views();
  pending_.bytes_gathered = step_bytes;
  module_->train(was_training);
  at::Tensor t = at::tensor({total, static_cast<double>(micro_batches.size())}, at::kDouble);
  if (!flats_.empty()) t = t.to(flats_.front().grad_shard().device());
  groups_.world.all_reduce(t, comm::ReduceOp::kSum);
  const at::Tensor h = t.cpu();
  return h[1].item<double>() > 0 ? h[0].item<double>() / h[1].item<double>() : 0.0;
}

ShardedEngine::NonFiniteReport ShardedEngine::locate_non_finite(const nn::UnitBatch& batch) {
  const torch::NoGradGuard no_grad;
  module_->train();
  const int64_t step_bytes = pending_.bytes_gathered;
  auto finite = [](const at::Tensor& t) {
    return !t.defined() || !at::isFloatingType(t.scalar_type()) || at::isfinite(t).all().item<bool>();
  };
  // Every rank runs every unit even after it found one: the units' collectives (the
  // all-to-all of MoE blocks, the parameter gathers) need all ranks.
  int64_t first = num_units_;
  std::vector<at::Tensor> prev;
  for (int64_t i = 0; i < num_units_; ++i) {
    gather_for(i, options_.prefetch, +1);
    nn::UnitStep s = seq_->run_unit(i, prev, batch);
    bool ok = finite(s.aux_loss);
    for (const at::Tensor& t : s.outputs) ok = ok && finite(t);
    if (!ok && first == num_units_) first = i;
    for (size_t f : flats_used_by_[i]) {
      if (last_use_[f] == i) flats_[f].release();
    }
    prev = std::move(s.outputs);
  }
  for (FlatUnit& f : flats_) f.unbind_views();
  pending_.bytes_gathered = step_bytes;
  const at::Tensor firsts = groups_.world.all_gather(at::tensor({first}, at::kLong)).cpu();
  NonFiniteReport report;
  const int64_t job_first = firsts.min().item<int64_t>();
  if (job_first == num_units_) return report;
  report.unit = job_first;
  report.unit_name = seq_->unit_name(job_first);
  for (int64_t r = 0; r < firsts.numel(); ++r) {
    if (firsts[r].item<int64_t>() == job_first) report.ranks.push_back(r);
  }
  return report;
}

std::map<std::string, at::Tensor> ShardedEngine::shard_state_dict() const {
  std::map<std::string, at::Tensor> out;
  for (const FlatUnit& f_const : flats_) {
    auto& f = const_cast<FlatUnit&>(f_const);
    const std::string k = f.name() + ".flat.";
    out[k + "param"] = f.master_shard().clone();
    out[k + "exp_avg"] = f.exp_avg().clone();
    out[k + "exp_avg_sq"] = f.exp_avg_sq().clone();
    out[k + "layout"] = at::tensor({f.numel(), f.padded_numel(), f.shard_offset(), f.shard_numel()}, at::kLong);
  }
  for (const ExpertState& e : experts_) {
    out[e.name + ".param"] = e.master.detach().clone();
    out[e.name + ".exp_avg"] = e.exp_avg.clone();
    out[e.name + ".exp_avg_sq"] = e.exp_avg_sq.clone();
  }
  out["step"] = at::tensor(step_, at::kLong);
  out["loss_scale"] = at::tensor(loss_scale_, at::kDouble);
  return out;
}

void ShardedEngine::load_shard_state_dict(const std::map<std::string, at::Tensor>& state) {
  const torch::NoGradGuard no_grad;
  auto get = [&](const std::string& key, const at::Tensor& like) -> const at::Tensor& {
    auto it = state.find(key);
    TORCH_CHECK_VALUE(it != state.end(), "ShardedEngine.load_shard_state_dict: missing key '", key, "'");
    TORCH_CHECK_VALUE(it->second.sizes() == like.sizes(), "ShardedEngine.load_shard_state_dict: '", key,
                      "' has shape ", it->second.sizes(), ", expected ", like.sizes(),
                      " (saved with another world size or model?)");
    return it->second;
  };
  for (FlatUnit& f : flats_) {
    const std::string k = f.name() + ".flat.";
    const at::Tensor layout = at::tensor({f.numel(), f.padded_numel(), f.shard_offset(), f.shard_numel()}, at::kLong);
    TORCH_CHECK_VALUE(at::equal(get(k + "layout", layout).cpu(), layout),
                      "ShardedEngine.load_shard_state_dict: '", k, "layout' is ", state.at(k + "layout"),
                      " but this rank's shard is ", layout);
    f.master_shard().copy_(get(k + "param", f.master_shard()));
    f.exp_avg().copy_(get(k + "exp_avg", f.exp_avg()));
    f.exp_avg_sq().copy_(get(k + "exp_avg_sq", f.exp_avg_sq()));
    f.publish_master();
  }
  for (ExpertState& e : experts_) {
    e.master.copy_(get(e.name + ".param", e.master));
    e.exp_avg.copy_(get(e.name + ".exp_avg", e.exp_avg));
    e.exp_avg_sq.copy_(get(e.name + ".exp_avg_sq", e.exp_avg_sq));
    if (!e.master_is_param) e.param.copy_(e.master);
  }
  auto it = state.find("step");
  TORCH_CHECK_VALUE(it != state.end(), "ShardedEngine.load_shard_state_dict: missing key 'step'");
  step_ = it->second.item<int64_t>();
  it = state.find("loss_scale");
  if (it != state.end()) loss_scale_ = it->second.item<double>();
}

std::vector<StateTensor> ShardedEngine::state_tensors() {
  std::vector<StateTensor> out;
  const bool first_dp = groups_.data_parallel.rank() == 0;
  for (FlatUnit& f : flats_) {
    const int64_t valid = std::clamp<int64_t>(f.numel() - f.shard_offset(), 0, f.shard_numel());
    auto add = [&](const char* field, const at::Tensor& t) {
      StateTensor s;
      s.key = f.name() + ".flat." + field;
      s.tensor = t;
      s.kind = StateTensor::Kind::kFlat;
      s.unit = f.name();
      s.unit_numel = f.numel();
      s.start = f.shard_offset();
      s.valid = valid;
      s.save = (f.sharded() || first_dp) && valid > 0;  // a replicated unit: rank 0's copy
      out.push_back(std::move(s));
    };
    add("param", f.master_shard());
    add("exp_avg", f.exp_avg());
    add("exp_avg_sq", f.exp_avg_sq());
  }
  // The layer owning each expert parameter knows which global experts this rank's rows are.
  const auto layers = moe_layers();
  const bool first_replica = groups_.expert_data_parallel.rank() == 0;
  for (ExpertState& e : experts_) {
    const std::shared_ptr<nn::MoELayerImpl> owner = owner_layer(layers, e.name);
    TORCH_CHECK(owner, "ShardedEngine.state_tensors: expert parameter '", e.name, "' belongs to no MoE layer");
    const int64_t E = owner->options().num_experts;
    std::vector<int64_t> ids;
    if (const auto& ep = owner->expert_parallelism()) {
      ids = ep->local_experts();
    } else {
      for (int64_t i = 0; i < E; ++i) ids.push_back(i);
    }
    TORCH_CHECK(e.master.dim() >= 1 && e.master.size(0) == static_cast<int64_t>(ids.size()),
                "ShardedEngine.state_tensors: expert parameter '", e.name, "' has shape ", e.master.sizes(),
                " but its layer holds ", ids.size(), " experts on this rank");
    for (auto [field, t] : {std::pair<const char*, at::Tensor>{"param", e.master}, {"exp_avg", e.exp_avg},
                            {"exp_avg_sq", e.exp_avg_sq}}) {
      StateTensor s;
      s.key = e.name + "." + field;
      s.tensor = t;
      s.kind = StateTensor::Kind::kExperts;
      s.experts = ids;
      s.num_experts = E;
      s.save = first_replica;
      out.push_back(std::move(s));
    }
  }
  const bool first_rank = groups_.world.rank() == 0;
  for (const auto& item : module_->named_buffers(/*recurse=*/true)) {
    if (!item.value().defined()) continue;
    StateTensor s;
    s.key = "buffer." + item.key();
    s.tensor = item.value();
    s.kind = StateTensor::Kind::kWhole;
    s.save = first_rank;
    out.push_back(std::move(s));
  }
  return out;
}

void ShardedEngine::finish_state_load(const EngineCounters& counters) {
  const torch::NoGradGuard no_grad;
  for (FlatUnit& f : flats_) f.publish_master();
  for (ExpertState& e : experts_) {
    if (!e.master_is_param) e.param.copy_(e.master);
  }
  step_ = counters.step;
  loss_scale_ = counters.loss_scale;
  clean_steps_ = counters.clean_steps;
}

std::map<std::string, at::Tensor> ShardedEngine::gather_dense_parameters() {
  std::map<std::string, at::Tensor> out;
  for (FlatUnit& f : flats_) {
    at::Tensor full = f.sharded() ? groups_.data_parallel.all_gather(f.master_shard()) : f.master_shard();
    for (const FlatParam& p : f.params()) out[p.name] = full.narrow(0, p.offset, p.numel).view(p.sizes).clone();
  }
  return out;
}

std::map<std::string, at::Tensor> ShardedEngine::local_expert_parameters() const {
  std::map<std::string, at::Tensor> out;
  for (const ExpertState& e : experts_) out[e.name] = e.master.detach().clone();
  return out;
}

double ShardedEngine::analytic_dense_bytes_per_micro_batch() const {
  const double R = static_cast<double>(groups_.data_parallel.size());
  double numel = 0;
  for (const FlatUnit& f : flats_) numel += static_cast<double>(f.numel());
  if (!options_.shard_dense || R == 1) return 2 * (R - 1) / R * numel * elem(options_.reduce_dtype());
  return (R - 1) / R * numel * (2.0 * elem(options_.compute_dtype()) + elem(options_.reduce_dtype()));
}

MemoryReport ShardedEngine::memory_report() const {
  MemoryReport m;
  const int64_t c = elem(options_.compute_dtype()), ms = elem(options_.master_dtype()),
                rd = elem(options_.reduce_dtype());
  const bool separate_master = options_.master_dtype() != options_.compute_dtype();
  for (const FlatUnit& f : flats_) {
    m.dense_numel += f.numel();
    m.dense_shard_numel += f.shard_numel();
    m.persistent_dense_bytes += f.shard_state_bytes() + (f.sharded() ? 0 : f.gathered_bytes());
    m.largest_unit_bytes = std::max(m.largest_unit_bytes, f.padded_numel() * (c + rd));
  }
  m.unsharded_dense_bytes = m.dense_numel * (c + (separate_master ? ms : 0) + 3 * ms);
  m.peak_transient_bytes = transient_peak_;
  m.allocator_current_bytes = allocator_->counter().current.load();
  m.allocator_peak_bytes = allocator_->counter().peak.load();
  for (const ExpertState& e : experts_) {
    m.expert_bytes += e.param.nbytes() + e.grad.nbytes() + e.exp_avg.nbytes() + e.exp_avg_sq.nbytes() +
                      (e.master_is_param ? 0 : e.master.nbytes());
  }
  return m;
}

}  // namespace switchyard::sharding
