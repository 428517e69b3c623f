// ShardedEngine: trains a model that describes itself as a nn::UnitSequence on every rank
// of a job, in the manner of ZeRO-3 / PyTorch FSDP for the dense parameters and expert
// parallelism for the routed experts (docs/sharding.md is the user's page).
//
//   dense parameters   one FlatUnit per unit (flat_unit.h): sharded over the data-parallel
//                      group (the whole world, Note [Group layout]); gathered in the compute
//                      dtype just before the unit runs, released after, re-gathered for its
//                      backward, gradients reduce-scattered so each rank keeps its shard
//   expert parameters  made expert-parallel over groups.expert_parallel at construction
//                      (contiguous placement); stay whole on their host rank; gradients
//                      all-reduced over groups.expert_data_parallel when data_parallel > 1
//   optimizer          AdamW on the shards and the local experts, master weights and state
//                      in float32 (float64 under precision fp64); no decay on 1-D params;
//                      global gradient-norm clipping counting every shard and expert once
//
// One step(micro_batches, lr), per micro-batch (1-4), then once (5-8):
//   1. forward unit by unit: wait for the unit's gather (prefetching the next unit's),
//      run_unit on the previous unit's outputs detached, keep its graph, release params
//   2. backward in reverse: re-gather the unit (prefetching the previous one), autograd on
//      (its outputs with the next unit's input gradients, its aux_loss) x loss scale, read the
//      gradients of its inputs, its parameters and its experts
//   3. add the unit's dense gradients into its flat gradient buffer; when the unit owning a
//      flat buffer is done, reduce-scatter it (non-blocking) into the gradient shard, release
//   4. expert gradients accumulate locally
//   5. all-reduce expert gradients over expert_data_parallel; scale everything by
//      1 / (world * grad_accum * loss_scale): the objective is the mean over ranks and
//      micro-batches of each rank's (mean loss + aux losses)
//   6. global norm: sum of squares of every rank's shards + experts on replica 0 only,
//      all-reduced; non-finite -> skip the step (fp16: halve the loss scale)
//   7. clip (torch's clip_grad_norm_ coefficient), AdamW on shards and experts
//   8. replicated units copy their master back; sharded ones are read at the next gather
//
// Collective: the constructor and every method that runs the model are collective over the
// world; all ranks call them in the same order.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "switchyard/comm/process_groups.h"
#include "switchyard/dispatch/expert_placement.h"
#include "switchyard/nn/unit_sequence.h"
#include "switchyard/sharding/counting_allocator.h"
#include "switchyard/sharding/flat_unit.h"
#include "switchyard/sharding/sharding_options.h"

namespace switchyard::nn {
class MoELayerImpl;
}

namespace switchyard::sharding {

struct StepResult {
  double loss = 0;       // mean over ranks and micro-batches of the language-model loss
  double aux_loss = 0;   // the same for the sum of the units' aux losses
  double grad_norm = 0;  // global norm of the (unscaled, unclipped) gradient
  double clip_coef = 1;  // what gradients were multiplied by (1 = not clipped)
  bool clipped = false;
  bool skipped = false;  // non-finite gradient: no update (fp16: loss scale halved)
  double loss_scale = 1;
  int64_t bytes_gathered = 0;         // this rank, this step: all-gathers received
  int64_t bytes_reduced = 0;          // reduce-scatters (or all-reduces) of dense gradients
  int64_t bytes_expert_reduced = 0;   // all-reduces of expert gradients
  int max_units_gathered = 0;         // most flat units holding memory at once
  double seconds = 0;
  double forward_seconds = 0;  // the forward passes alone (what recomputation would repeat)
  // Per unit, the last micro-batch's stats, named "<unit>.<stat>".
  std::vector<std::pair<std::string, at::Tensor>> stats;
};

// Bytes of dense-parameter state on this rank (see docs/sharding.md, "Memory").
struct MemoryReport {
  int64_t dense_numel = 0;             // every dense parameter, unpadded
  int64_t dense_shard_numel = 0;       // this rank's shards, padded
  int64_t persistent_dense_bytes = 0;  // shards (master, grad, exp_avg, exp_avg_sq) + replicated params
  int64_t unsharded_dense_bytes = 0;   // the same state for every dense parameter on one rank
  int64_t largest_unit_bytes = 0;      // one gathered unit: params (compute) + gradient buffer (reduce)
  int64_t peak_transient_bytes = 0;    // most gathered params + gradient buffers at once, last step
  int64_t allocator_current_bytes = 0; // the engine's CountingAllocator now
  int64_t allocator_peak_bytes = 0;    // ... and its peak since the last step began
  int64_t expert_bytes = 0;            // local experts: params, grads, master (if separate), state
};

// One tensor of a rank's training state as a checkpoint sees it (csrc/switchyard/checkpoint):
// what it is in rank-independent terms, so a checkpoint written on R ranks can be read on R'.
struct StateTensor {
  enum class Kind {
    kFlat,     // a shard of a unit's flat buffer: elements [start, start + numel) of the unit
    kExperts,  // rows (dim 0) of an expert parameter or its AdamW state, one per local expert
    kWhole,    // replicated on every rank (model buffers)
  };
  std::string key;   // "<unit>.flat.{param,exp_avg,exp_avg_sq}", "<expert param>.{param,exp_avg,
                     // exp_avg_sq}", "buffer.<name>"
  at::Tensor tensor; // the live tensor: saving reads it, loading writes into it
  Kind kind = Kind::kWhole;
  std::string unit;          // kFlat: the unit's name
  int64_t unit_numel = 0;    // kFlat: the unit's unpadded numel
  int64_t start = 0;         // kFlat: where tensor[0] sits in the unit's flat layout
  int64_t valid = 0;         // kFlat: elements of tensor that are not padding
  std::vector<int64_t> experts;  // kExperts: global expert id of each row
  int64_t num_experts = 0;       // kExperts: the layer's routed experts
  bool save = false;  // this rank writes it: one copy of every element over the job
};

// The engine's scalar state besides its tensors.
struct EngineCounters {
  int64_t step = 0;
  double loss_scale = 1;
  int64_t clean_steps = 0;
};

class ShardedEngine {
 public:
  // model must also derive from nn::UnitSequence (a TypeError-like c10::TypeError names it
  // otherwise) and hold identical dense weights on every rank (same seed). Makes its MoE
  // layers expert-parallel, binds the dense parameters into flat units, checks that every
  // rank has the same parameter set and the world fits the parallel sizes. Collective.
  ShardedEngine(std::shared_ptr<torch::nn::Module> model, comm::ProcessGroups groups,
                ShardingOptions options);

  // The process groups and options of `config` (parallel:, train:) over `world`; throws
  // switchyard::Error naming the sizes when the world does not fit parallel:. Collective.
  static std::unique_ptr<ShardedEngine> from_config(std::shared_ptr<torch::nn::Module> model,
                                                    const config::Config& config,
                                                    const comm::Communicator& world);

  // Exactly options.grad_accum micro-batches (this rank's). Collective.
  StepResult step(const std::vector<nn::UnitBatch>& micro_batches, double lr);

  // The pieces of step(), for tests and custom loops: forward_backward accumulates one
  // micro-batch's gradients, apply_step finishes the reductions and updates (steps 5-8).
  std::pair<at::Tensor, at::Tensor> forward_backward(const nn::UnitBatch& batch);
  StepResult apply_step(double lr);

  // Mean language-model loss over the given micro-batches and every rank, without
  // gradients, in eval mode; the aux losses (load balancing, z-loss) are training
  // regularisers and are not included. Collective.
  double eval_loss(const std::vector<nn::UnitBatch>& micro_batches);

  // Where a non-finite loss comes from: runs `batch` forward unit by unit (training mode, no
  // gradients, no update) and returns the first unit, over every rank, whose outputs or aux
  // loss hold a NaN or Inf, with the ranks that saw it there; unit = -1 when every unit
  // stayed finite. Collective. The routing statistics of this pass count towards the next
  // selection-bias update: call it when the run is about to stop.
  struct NonFiniteReport {
    int64_t unit = -1;
    std::string unit_name;
    std::vector<int64_t> ranks;
  };
  NonFiniteReport locate_non_finite(const nn::UnitBatch& batch);

  // This rank's state: "<unit>.flat.{param,exp_avg,exp_avg_sq}" (the shard, master dtype),
  // "<expert param>.{param,exp_avg,exp_avg_sq}", "step", "loss_scale",
  // "<unit>.flat.layout" (int64 [numel, padded, shard_offset, shard_numel]).
  std::map<std::string, at::Tensor> shard_state_dict() const;
  // Restores what shard_state_dict() returned on the same rank of the same layout (throws
  // c10::ValueError naming the key and both shapes otherwise).
  void load_shard_state_dict(const std::map<std::string, at::Tensor>& state);

  // --- checkpoints (csrc/switchyard/checkpoint/checkpoint.h) ---------------------------------
  // Every tensor of this rank's state (shards, local experts and their AdamW moments, model
  // buffers), live. Not collective.
  std::vector<StateTensor> state_tensors();
  // The unit layouts of the flat buffers: unit name -> its parameters in order.
  const std::vector<FlatUnit>& flat_unit_layouts() const { return flats_; }
  EngineCounters counters() const { return {step_, loss_scale_, clean_steps_}; }
  // After a loader wrote every state_tensors() entry: sets the counters and makes the
  // parameters read the restored master weights. Not collective.
  void finish_state_load(const EngineCounters& counters);

  // Every dense parameter gathered (collective), by name, master dtype. For tests and export.
  std::map<std::string, at::Tensor> gather_dense_parameters();
  // Expert parameters of this rank (master dtype), by name.
  std::map<std::string, at::Tensor> local_expert_parameters() const;

  // --- live expert re-placement (csrc/switchyard/placement/live_placement.h) -------------------
  // The expert-parallel MoE layers in model order (module path, routed experts, placement);
  // empty when parallel.expert_parallel = 1.
  struct ExpertLayer {
    std::string name;
    int64_t num_experts = 0;
    dispatch::ExpertPlacement placement;
  };
  std::vector<ExpertLayer> expert_layers() const;
  // What one set_expert_placements moved, from this rank's point of view. "Sent" counts rows
  // to other ranks only (an expert that stays is not copied over the network).
  struct MigrationReport {
    int64_t layers_changed = 0;
    int64_t experts_sent = 0, experts_received = 0;
    int64_t bytes_sent = 0, bytes_received = 0;  // master weights + both AdamW moments
    double seconds = 0;
  };
  // Makes placements[i] the placement of expert_layers()[i]: every expert that changes rank
  // travels with its master weights and AdamW moments (one all_to_all_v over the
  // expert-parallel group per changed layer, Note [Migration] in expert_migration.cpp), and
  // the layers' dispatchers switch to the new map, so the next step computes exactly what it
  // would have computed without the move. Between steps only (no accumulated micro-batch).
  // Collective over the world; every rank must pass the same placements (checked).
  MigrationReport set_expert_placements(const std::vector<dispatch::ExpertPlacement>& placements);

  MemoryReport memory_report() const;
  const ShardingOptions& options() const { return options_; }
  const std::shared_ptr<torch::nn::Module>& module() const { return module_; }
  const comm::ProcessGroups& groups() const { return groups_; }
  std::vector<FlatUnit>& flat_units() { return flats_; }
  int64_t optimizer_step() const { return step_; }
  double loss_scale() const { return loss_scale_; }
  // Analytic ZeRO-3 bytes per rank per micro-batch for the dense parameters:
  // 2 all-gathers (forward, backward) + 1 reduce-scatter of the unpadded parameters.
  double analytic_dense_bytes_per_micro_batch() const;

 private:
  struct ExpertState {
    std::string name;
    at::Tensor param, master, grad, exp_avg, exp_avg_sq;
    bool master_is_param = false;
  };
  struct UnitRun {
    std::vector<at::Tensor> inputs, outputs;
    at::Tensor aux_loss;
  };
  // Where a unit's dense parameter lives: flat unit and index in it.
  struct ParamRef {
    size_t flat, index;
  };

  void parallelize_experts();
  // The MoE layers of the model in named_modules order, with their module paths.
  std::vector<std::pair<std::string, std::shared_ptr<nn::MoELayerImpl>>> moe_layers() const;
  // The layer among `layers` whose path is the longest prefix of an expert parameter's name.
  static std::shared_ptr<nn::MoELayerImpl> owner_layer(
      const std::vector<std::pair<std::string, std::shared_ptr<nn::MoELayerImpl>>>& layers,
      const std::string& expert_param);
  // After each optimizer step: every MoE layer with moe.bias_update_rate > 0 moves its
  // selection bias by the load summed over the world (collective).
  void update_selection_biases();
  void build_units();
  void check_same_parameters() const;
  void gather_for(int64_t unit, bool prefetch_next_of_direction, int direction);
  void track_transient();

  std::shared_ptr<torch::nn::Module> module_;
  nn::UnitSequence* seq_;
  comm::ProcessGroups groups_;
  ShardingOptions options_;
  CountingAllocator* allocator_;

  int64_t num_units_ = 0;
  std::vector<FlatUnit> flats_;
  std::vector<std::vector<size_t>> flats_used_by_;      // per unit
  std::vector<int64_t> last_use_;                        // per flat
  std::vector<std::vector<ParamRef>> unit_dense_;        // per unit, its dense params in order
  std::vector<std::vector<size_t>> unit_experts_;        // per unit, indices into experts_
  std::vector<ExpertState> experts_;

  int64_t step_ = 0;
  double loss_scale_ = 1;
  int64_t clean_steps_ = 0;
  int64_t micro_batches_ = 0;  // accumulated since the last apply_step
  at::Tensor loss_sum_, aux_sum_;
  StepResult pending_;         // byte counters and stats of the step being accumulated
  int64_t transient_peak_ = 0;
};

}  // namespace switchyard::sharding
