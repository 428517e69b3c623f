// UnitSequence: a model seen as a chain of units -- the embedding, each transformer block,
// the final norm + output head -- whose parameters are fetched, used and released together.
//
// Why: the sharding engine (csrc/switchyard/sharding/) must gather a unit's parameters just
// before the unit runs and free them right after, forward and backward. LibTorch modules
// have no forward hooks, so instead the model describes its units and runs any one of them
// on request; the engine drives forward unit by unit and backward in reverse, one unit's
// graph at a time. The model's own forward() calls run_unit() for every unit in order, so a
// plain single-process run and a sharded run execute the same code (one source of truth),
// and the model knows nothing of sharding or communication.
//
// Contract
//   * Units run in order 0 .. num_units()-1. Unit i receives the tensors unit i-1 returned
//     in `outputs` (unit 0 receives none and reads batch.input_ids); the last unit reads
//     batch.targets and returns exactly one output: the scalar mean next-token loss.
//   * outputs may hold undefined tensors (e.g. no router logits before the first MoE
//     block); floating-point outputs carry gradients to the next unit.
//   * aux_loss is what the unit adds to the training objective beyond the language-model
//     loss (the MoE balancing losses, already weighted by their coefficients); undefined
//     when the unit adds nothing. The objective is loss + sum of every unit's aux_loss.
//   * stats are detached, named diagnostics of the run (e.g. an MoE block's
//     "expert_counts"), for logging only.
//   * unit_parameters(i) lists every parameter unit i reads, by its name in the model's
//     named_parameters(). A parameter listed by several units (tied embeddings) belongs to
//     the first that lists it; the engine keeps it available from its first use forward to
//     its last use backward. `expert` marks routed-expert weights: they live on the ranks
//     that host the expert (expert parallelism) and are not sharded with the dense ones.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace switchyard::nn {

// One micro-batch of language-model data: input_ids and targets are int64 [B, S];
// targets < 0 are ignored by the loss.
struct UnitBatch {
  at::Tensor input_ids;
  at::Tensor targets;
};

struct UnitStep {
  std::vector<at::Tensor> outputs;
  at::Tensor aux_loss;
  std::vector<std::pair<std::string, at::Tensor>> stats;
};

struct UnitParameter {
  std::string name;  // as in the model's named_parameters()
  at::Tensor tensor;
  bool expert = false;
};

class UnitSequence {
 public:
  virtual ~UnitSequence() = default;

  virtual int64_t num_units() const = 0;
  // A short label for messages and accounting, e.g. "embed", "blocks.3", "head".
  virtual std::string unit_name(int64_t i) const = 0;
  virtual std::vector<UnitParameter> unit_parameters(int64_t i) = 0;
  virtual UnitStep run_unit(int64_t i, const std::vector<at::Tensor>& inputs,
                            const UnitBatch& batch) = 0;
};

}  // namespace switchyard::nn
