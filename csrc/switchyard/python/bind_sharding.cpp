// Python view of switchyard::sharding (submodule switchyard._C.sharding): the sharded
// training engine, its options, and the toy UnitSequence model its tests and benchmark use.
// python/switchyard/sharding.py wraps them (construction from a config, dict results);
// docs/sharding.md is the user's page. Collectives run with the GIL released.
#include <torch/python.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "switchyard/common/error.h"
#include "switchyard/config/config.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"
#include "switchyard/sharding/sharded_engine.h"
#include "switchyard/sharding/sharding_options.h"
#include "switchyard/sharding/toy_model.h"

namespace py = pybind11;

namespace switchyard::python {
namespace {

using sharding::ShardedEngine;

std::vector<nn::UnitBatch> to_batches(const py::sequence& micro_batches) {
  std::vector<nn::UnitBatch> out;
  for (const py::handle& item : micro_batches) {
    const py::sequence pair = py::reinterpret_borrow<py::sequence>(item);
    if (py::len(pair) != 2) throw py::type_error("ShardedEngine: each micro-batch must be (input_ids, targets)");
    out.push_back({pair[0].cast<at::Tensor>(), pair[1].cast<at::Tensor>()});
  }
  return out;
}

py::dict result_dict(const sharding::StepResult& r) {
  py::dict d;
#define SY_FIELD(name) d[#name] = r.name;
  SY_FIELD(loss) SY_FIELD(aux_loss) SY_FIELD(grad_norm) SY_FIELD(clip_coef) SY_FIELD(clipped)
  SY_FIELD(skipped) SY_FIELD(loss_scale) SY_FIELD(bytes_gathered) SY_FIELD(bytes_reduced)
  SY_FIELD(bytes_expert_reduced) SY_FIELD(max_units_gathered) SY_FIELD(seconds) SY_FIELD(forward_seconds)
#undef SY_FIELD
  py::dict stats;
  for (const auto& [name, value] : r.stats) stats[py::str(name)] = value;
  d["stats"] = stats;
  return d;
}

py::dict memory_dict(const sharding::MemoryReport& m) {
  py::dict d;
#define SY_FIELD(name) d[#name] = m.name;
  SY_FIELD(dense_numel) SY_FIELD(dense_shard_numel) SY_FIELD(persistent_dense_bytes)
  SY_FIELD(unsharded_dense_bytes) SY_FIELD(largest_unit_bytes) SY_FIELD(peak_transient_bytes)
  SY_FIELD(allocator_current_bytes) SY_FIELD(allocator_peak_bytes) SY_FIELD(expert_bytes)
#undef SY_FIELD
  return d;
}

std::shared_ptr<torch::nn::Module> to_module(const py::object& model) {
  py::object cpp = py::hasattr(model, "cpp_module") ? model.attr("cpp_module") : model;
  try {
    return cpp.cast<std::shared_ptr<torch::nn::Module>>();
  } catch (const py::cast_error&) {
    throw py::type_error("ShardedEngine: expected a switchyard C++ model (a module with .cpp_module "
                         "implementing switchyard::nn::UnitSequence), got " +
                         py::str(py::type::of(model)).cast<std::string>());
  }
}

}  // namespace

void bind_sharding(py::module_& m) {
  using sharding::ShardingOptions;
  py::module_ s = m.def_submodule("sharding", "FSDP-style sharded training engine (switchyard::sharding)");

  py::class_<ShardingOptions>(s, "ShardingOptions",
                              "What the engine reads from parallel: and train: (docs/sharding.md).")
      .def(py::init<>())
      .def_readwrite("shard_dense", &ShardingOptions::shard_dense)
      .def_readwrite("grad_accum", &ShardingOptions::grad_accum)
      .def_readwrite("beta1", &ShardingOptions::beta1)
      .def_readwrite("beta2", &ShardingOptions::beta2)
      .def_readwrite("eps", &ShardingOptions::eps)
      .def_readwrite("weight_decay", &ShardingOptions::weight_decay)
      .def_readwrite("grad_clip", &ShardingOptions::grad_clip)
      .def_readwrite("precision", &ShardingOptions::precision)
      .def_readwrite("reduce_precision", &ShardingOptions::reduce_precision)
      .def_readwrite("loss_scale", &ShardingOptions::loss_scale)
      .def_readwrite("prefetch", &ShardingOptions::prefetch)
      .def("validate", [](const ShardingOptions& o) { translating([&] { o.validate(); return 0; }); })
      .def_static("from_config", [](const config::Config& c) {
             return translating([&] { return sharding::sharding_options_from_config(c); });
           }, py::arg("config"));

  torch::python::bind_module<sharding::ToyMoEStackImpl>(s, "ToyMoEStack")
      .def(py::init([](int64_t vocab, int64_t num_blocks, int64_t mlp_hidden, bool tie_embeddings,
                       const nn::MoELayerOptions& moe) {
             sharding::ToyMoEStackOptions o;
             o.vocab = vocab;
             o.num_blocks = num_blocks;
             o.mlp_hidden = mlp_hidden;
             o.tie_embeddings = tie_embeddings;
             o.moe = moe;
             return translating([&] { return std::make_shared<sharding::ToyMoEStackImpl>(o); });
           }),
           py::arg("vocab"), py::arg("num_blocks"), py::arg("mlp_hidden"), py::arg("tie_embeddings"),
           py::arg("moe"))
      .def("forward", [](sharding::ToyMoEStackImpl& self, const at::Tensor& ids, const at::Tensor& targets) {
             auto [loss, aux] = translating([&] { return self.forward(ids, targets); });
             return py::make_tuple(loss, aux);
           }, py::arg("input_ids"), py::arg("targets"))
      .def("num_units", &sharding::ToyMoEStackImpl::num_units)
      .def("unit_name", &sharding::ToyMoEStackImpl::unit_name);

  py::class_<ShardedEngine>(s, "ShardedEngine", "The sharded training engine (docs/sharding.md).")
      .def(py::init([](const py::object& model, comm::ProcessGroups groups, ShardingOptions options) {
             std::shared_ptr<torch::nn::Module> module = to_module(model);
             return released([&] {
               return std::make_unique<ShardedEngine>(std::move(module), std::move(groups), std::move(options));
             });
           }),
           py::arg("model"), py::arg("groups"), py::arg("options"))
      .def("step", [](ShardedEngine& e, const py::sequence& micro_batches, double lr) {
             const auto batches = to_batches(micro_batches);
             return result_dict(released([&] { return e.step(batches, lr); }));
           }, py::arg("micro_batches"), py::arg("lr"))
      .def("eval_loss", [](ShardedEngine& e, const py::sequence& micro_batches) {
             const auto batches = to_batches(micro_batches);
             return released([&] { return e.eval_loss(batches); });
           }, py::arg("micro_batches"))
      .def("shard_state_dict", &ShardedEngine::shard_state_dict)
      .def("load_shard_state_dict", [](ShardedEngine& e, const std::map<std::string, at::Tensor>& state) {
             translating([&] { e.load_shard_state_dict(state); return 0; });
           }, py::arg("state"))
      .def("locate_non_finite", [](ShardedEngine& e, const at::Tensor& input_ids, const at::Tensor& targets) {
             const auto r = released([&] { return e.locate_non_finite({input_ids, targets}); });
             py::dict d;
             d["unit"] = r.unit;
             d["unit_name"] = r.unit_name;
             d["ranks"] = r.ranks;
             return d;
           }, py::arg("input_ids"), py::arg("targets"),
           "Runs the micro-batch forward unit by unit; the first unit (over every rank) whose "
           "outputs are non-finite: {'unit': index or -1, 'unit_name', 'ranks'}. Collective.")
      .def("gather_dense_parameters", [](ShardedEngine& e) {
             return released([&] { return e.gather_dense_parameters(); });
           })
      .def("local_expert_parameters", &ShardedEngine::local_expert_parameters)
      .def("expert_layers", [](const ShardedEngine& e) {
             py::list out;
             for (const auto& l : e.expert_layers()) {
               py::dict d;
               d["name"] = l.name;
               d["num_experts"] = l.num_experts;
               d["placement"] = l.placement.rank_of_expert();
               out.append(d);
             }
             return out;
           },
           "The expert-parallel MoE layers in model order: [{'name', 'num_experts', 'placement': "
           "rank of each expert}]; empty without expert parallelism.")
      .def("set_expert_placements", [](ShardedEngine& e, const std::vector<std::vector<int64_t>>& maps) {
             const int64_t R = e.groups().expert_parallel_size;
             const auto report = released([&] {
               std::vector<dispatch::ExpertPlacement> placements;
               for (const auto& m : maps) placements.emplace_back(m, R);
               return e.set_expert_placements(placements);
             });
             py::dict d;
             d["layers_changed"] = report.layers_changed;
             d["experts_sent"] = report.experts_sent;
             d["experts_received"] = report.experts_received;
             d["bytes_sent"] = report.bytes_sent;
             d["bytes_received"] = report.bytes_received;
             d["seconds"] = report.seconds;
             return d;
           }, py::arg("placements"),
           "Moves the experts (master weights and AdamW moments) so that layer i follows "
           "placements[i] (rank of each expert) and switches the dispatchers; between steps. "
           "Collective; every rank must pass the same maps. Returns what this rank moved.")
      .def("memory_report", [](const ShardedEngine& e) { return memory_dict(e.memory_report()); })
      .def("analytic_dense_bytes_per_micro_batch", &ShardedEngine::analytic_dense_bytes_per_micro_batch)
      .def_property_readonly("optimizer_step", &ShardedEngine::optimizer_step)
      .def_property_readonly("loss_scale", &ShardedEngine::loss_scale);
}

}  // namespace switchyard::python
