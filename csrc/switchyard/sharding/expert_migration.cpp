// ShardedEngine::expert_layers / set_expert_placements: moving routed experts between ranks
// during training (live re-placement, docs/placement.md).
//
// Note [Migration]
// An expert's training state is its rows in every expert parameter of its layer (gate, up
// and down projections): the master weights and both AdamW moments. Gradients are zero
// between steps and the compute-dtype parameter is a copy of the master, so neither travels.
// Per changed layer, each rank packs, for every destination rank in turn, the rows of the
// experts it holds now that the new map puts there (ascending global id), each expert as one
// row of [master | exp_avg | exp_avg_sq] for every parameter, and a single all_to_all_v over
// the expert-parallel group delivers them. Both sides derive the splits from the two maps,
// which every rank knows, so no count exchange is needed. Experts that stay are "sent" to
// the rank itself (a local copy). The receiver orders the rows by global id, splits them
// back into tensors and rebinds the parameters (set_data: the Module, the engine and the
// optimizer keep referring to the same Parameter objects). Replicas over expert_data_parallel
// hold the same experts and migrate the same way, each within its own expert-parallel group.
// Nothing is rounded or recomputed, so a step after the move computes what it would have
// computed without it; only the order of the floating-point sums that combine partial rows
// from several ranks changes (docs/placement.md, "Results do not depend on placement").
#include "switchyard/sharding/sharded_engine.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <chrono>

#include "switchyard/comm/agreement.h"
#include "switchyard/dispatch/expert_parallel.h"
#include "switchyard/nn/experts.h"
#include "switchyard/nn/moe_layer.h"

namespace switchyard::sharding {
namespace {

std::shared_ptr<dispatch::ExpertParallel> expert_parallel_of(const nn::MoELayerImpl& layer,
                                                             const std::string& name) {
  auto ep = std::dynamic_pointer_cast<dispatch::ExpertParallel>(layer.expert_parallelism());
  TORCH_CHECK(ep, "ShardedEngine: MoE layer '", name, "' is not expert-parallel through a TokenDispatcher");
  return ep;
}

}  // namespace

std::vector<ShardedEngine::ExpertLayer> ShardedEngine::expert_layers() const {
  std::vector<ExpertLayer> out;
  for (const auto& [name, layer] : moe_layers()) {
    if (!layer->expert_parallelism()) continue;
    const auto ep = expert_parallel_of(*layer, name);
    out.push_back(ExpertLayer{name, layer->options().num_experts, ep->dispatcher().placement()});
  }
  return out;
}

ShardedEngine::MigrationReport ShardedEngine::set_expert_placements(
    const std::vector<dispatch::ExpertPlacement>& placements) {
  const auto start = std::chrono::steady_clock::now();
  TORCH_CHECK_VALUE(micro_batches_ == 0, "ShardedEngine.set_expert_placements: ", micro_batches_,
                    " micro-batch(es) accumulated since the last step; move experts between steps only");
  const std::vector<ExpertLayer> current = expert_layers();
  TORCH_CHECK_VALUE(placements.size() == current.size(), "ShardedEngine.set_expert_placements: got ",
                    placements.size(), " placements for ", current.size(), " expert-parallel MoE layers");
  std::string summary;
  for (size_t i = 0; i < placements.size(); ++i) {
    const dispatch::ExpertPlacement& p = placements[i];
    TORCH_CHECK_VALUE(p.num_experts() == current[i].num_experts && p.num_ranks() == groups_.expert_parallel_size,
                      "ShardedEngine.set_expert_placements: layer '", current[i].name, "' has ",
                      current[i].num_experts, " experts on ", groups_.expert_parallel_size,
                      " expert-parallel ranks but its new placement is ", p.to_string());
    summary += current[i].name + ": " + std::to_string(p.hash()) + "\n";
  }
  // Every expert-parallel group must adopt the same maps, or replicas of an expert would
  // diverge; set_placement only checks inside one group.
  comm::check_same_fields(groups_.world, "the new expert placements", {{"placements", summary}});

  MigrationReport report;
  const torch::NoGradGuard no_grad;
  const auto layers = moe_layers();
  comm::Communicator group = groups_.expert_parallel;
  const int64_t me = group.rank(), R = group.size();
  for (size_t i = 0; i < placements.size(); ++i) {
    const dispatch::ExpertPlacement& before = current[i].placement;
    const dispatch::ExpertPlacement& after = placements[i];
    if (before == after) continue;
    ++report.layers_changed;
    std::shared_ptr<nn::MoELayerImpl> layer;
    for (const auto& [name, l] : layers) {
      if (name == current[i].name) layer = l;
    }
    std::vector<ExpertState*> states;  // this layer's expert parameters, engine order (same on every rank)
    for (ExpertState& e : experts_) {
      if (owner_layer(layers, e.name) == layer) states.push_back(&e);
    }
    TORCH_CHECK(!states.empty(), "ShardedEngine.set_expert_placements: layer '", current[i].name,
                "' has no expert parameters in the engine");

    // One row per expert: [master | exp_avg | exp_avg_sq] of every parameter, flattened.
    auto row_of = [&](int64_t local) {
      std::vector<at::Tensor> parts;
      for (ExpertState* e : states) {
        for (const at::Tensor* t : {&e->master, &e->exp_avg, &e->exp_avg_sq}) parts.push_back((*t)[local].reshape({-1}));
      }
      return at::cat(parts);
    };
    std::vector<at::Tensor> send_rows;
    std::vector<int64_t> send_splits(R, 0), recv_splits(R, 0);
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t expert : after.local_experts(r)) {
        if (before.rank_of(expert) != me) continue;
        send_rows.push_back(row_of(before.local_index_of(expert)));
        ++send_splits[r];
      }
    }
    // Arriving rows are grouped by source rank, each group in ascending id: where is each
    // new local expert among them?
    const std::vector<int64_t>& mine = after.local_experts(me);
    std::vector<int64_t> position(mine.size());
    {
      std::vector<int64_t> offset(R + 1, 0);
      for (int64_t expert : mine) ++recv_splits[before.rank_of(expert)];
      for (int64_t s = 0; s < R; ++s) offset[s + 1] = offset[s] + recv_splits[s];
      for (size_t j = 0; j < mine.size(); ++j) position[j] = offset[before.rank_of(mine[j])]++;
    }
    const at::Tensor& like = states.front()->master;
    int64_t width = 0;
    for (ExpertState* e : states) width += 3 * (e->master.numel() / std::max<int64_t>(e->master.size(0), 1));
    const at::Tensor send = send_rows.empty() ? at::empty({0, width}, like.options()) : at::stack(send_rows);
    const at::Tensor received = group.all_to_all_v(send, send_splits, recv_splits);
    const at::Tensor rows = received.index_select(0, at::tensor(position, at::kLong).to(received.device()));

    const int64_t row_bytes = width * static_cast<int64_t>(like.element_size());
    for (int64_t r = 0; r < R; ++r) {
      if (r == me) continue;
      report.experts_sent += send_splits[r];
      report.experts_received += recv_splits[r];
      report.bytes_sent += send_splits[r] * row_bytes;
      report.bytes_received += recv_splits[r] * row_bytes;
    }

    // Unpack into fresh tensors and rebind.
    const int64_t L = static_cast<int64_t>(mine.size());
    int64_t column = 0;
    auto take = [&](const at::Tensor& shape_of) {
      std::vector<int64_t> sizes = shape_of.sizes().vec();
      sizes[0] = L;
      const int64_t n = shape_of.numel() / std::max<int64_t>(shape_of.size(0), 1);
      at::Tensor t = rows.narrow(1, column, n).contiguous().view(sizes);
      column += n;
      return t;
    };
    for (ExpertState* e : states) {
      at::Tensor master = take(e->master), exp_avg = take(e->exp_avg), exp_avg_sq = take(e->exp_avg_sq);
      if (e->master_is_param) {
        e->param.set_data(master);
        e->master = e->param;
      } else {
        e->master = master;
        e->param.set_data(master.to(e->param.scalar_type()));
      }
      e->exp_avg = exp_avg;
      e->exp_avg_sq = exp_avg_sq;
      e->grad = at::zeros(master.sizes(), e->grad.options());
    }
    layer->experts->sync_num_experts();
    expert_parallel_of(*layer, current[i].name)->set_placement(after);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace switchyard::sharding
