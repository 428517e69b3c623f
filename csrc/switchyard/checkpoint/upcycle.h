// Upcycling: a trained dense model's weights become the initial weights of an MoE model, and
// an E-expert MoE's become an m*E-expert MoE's (docs/upcycling.md is the user's page, with
// which methods preserve the source's function at initialisation and why).
//
// Everything here works on whole-model state dicts in switchyard's parameter names (the
// Hugging Face Llama names of docs/model.md), so the source may be a switchyard checkpoint
// (checkpoint::read_full_state) or an imported Hugging Face model alike; upcycle_checkpoint()
// wraps the whole operation from checkpoint to checkpoint.
//
// Methods (dense -> MoE), for every layer the target makes an MoE layer:
//   sparse        every routed expert is a copy of the dense FFN (optionally with noise)
//   drop          sparse, then a fraction of each copy's intermediate neurons re-initialised
//                 from the dense weights' statistics (Drop-Upcycling)
//   fine_grained  the dense FFN's F intermediate neurons cut into m = F / moe.ffn_hidden
//                 segments; routed experts are copies of the segments (expert e holds
//                 segment e mod m), down projections scaled by m (DeepSeekMoE-style)
// and with moe.num_shared_experts > 0, the shared expert is the dense FFN carrying
// `shared_fraction` of the output, the routed experts the rest.
// Expert upcycling (MoE -> MoE): expert e of the source becomes experts e, e + E, ...,
// e + (m-1)E of the target (copy c of every expert forms block c), router rows and selection
// biases likewise; top-k held fixed. Or, with UpcycleOptions::extra_copies, the originals
// followed by copies of the experts a utility score chose.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "switchyard/config/config.h"
#include "switchyard/nn/transformer_options.h"

namespace switchyard::checkpoint {

using StateDict = std::map<std::string, at::Tensor>;

struct UpcycleOptions {
  std::string method = "sparse";  // sparse | drop | fine_grained (dense sources)
  double noise = 0.0;             // copies += noise * std(weight) * N(0, 1); copy 0 stays exact
  double drop_fraction = 0.5;     // drop: share of each expert's intermediate neurons re-drawn
  double shared_fraction = 0.5;   // with a shared expert: the share of the output it carries
  double router_std = 0.0;        // router weights ~ N(0, router_std^2); 0 = zeros (ties)
  int64_t seed = 0;
  // Expert upcycling only: per MoE layer (in block order), the source expert each of the
  // target's experts E .. m*E-1 copies (experts 0 .. E-1 are the originals). Empty = every
  // expert m times (copy c of every expert is block c). Non-uniform duplication follows a
  // utility score (python/switchyard/upcycle.py, expert_utility).
  std::vector<std::vector<int64_t>> extra_copies;
};

struct UpcycleResult {
  StateDict state;                 // every parameter and buffer of the target model
  bool preserves_function = false; // exact at initialisation (no noise, no drop) -- and why
  std::string reason;
  std::vector<std::string> consumed;  // source tensors used (all of them, or it throws)
};

// Dense `source` (a model described by `from`, without MoE layers) -> the MoE model `to`.
// Throws switchyard::Error naming the tensor, field or option that does not fit; every
// tensor of `source` is consumed or it is an error.
UpcycleResult upcycle_dense(const StateDict& source, const nn::MoETransformerOptions& from,
                            const nn::MoETransformerOptions& to, const UpcycleOptions& options);

// E-expert `source` -> (m*E)-expert `to` (same everything else, top_k held fixed).
UpcycleResult upcycle_experts(const StateDict& source, const nn::MoETransformerOptions& from,
                              const nn::MoETransformerOptions& to, const UpcycleOptions& options);

// Either of the above, chosen by whether `from` has MoE layers.
UpcycleResult upcycle(const StateDict& source, const nn::MoETransformerOptions& from,
                      const nn::MoETransformerOptions& to, const UpcycleOptions& options);

// Writes `state` (every parameter and buffer of the model `config` describes, by name) as a
// step-0 checkpoint under `out_root` -- fresh optimizer state, so `checkpoint.resume: <dir>`
// starts training from these weights. Collective over the world: rank 0 writes it on a
// group of its own, the others wait (one process is the usual case). Returns the checkpoint
// directory. Throws naming a missing, extra or misshapen tensor.
std::string write_initial_checkpoint(const StateDict& state, const config::Config& config, const std::string& out_root,
                                     const std::map<std::string, std::string>& metadata);

// The whole operation: the switchyard checkpoint at `source` (its config and weights) ->
// the model of `target`, written as a step-0 checkpoint under `out_root`.
UpcycleResult upcycle_checkpoint(const std::string& source, const config::Config& target, const std::string& out_root,
                                 const UpcycleOptions& options);

}  // namespace switchyard::checkpoint
