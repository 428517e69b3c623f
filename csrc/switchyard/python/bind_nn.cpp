// Python view of switchyard::nn: the C++ modules themselves, bound with
// torch::python::bind_module (so each is a torch.nn.Module subclass delegating to the C++
// object), plus their option and output structs. python/switchyard/nn/ adds keyword
// construction and nested-module wrapping on top; it re-implements nothing.
//
//   _C.nn.MoELayerOptions   every field read/write; validate(); from_config(cfg)
//   _C.nn.MoELayer(options) forward(x, prev_router_logits=None) -> MoEOutput
//   _C.nn.MoEOutput         read-only tensors
//   _C.nn.ExpertParallelism the expert-parallel strategy interface (switchyard._C.dispatch
//                           .ExpertParallel implements it); MoELayer.enable_expert_parallel
//   _C.nn.MoETransformerOptions / MoETransformer / TransformerOutput: the language model
//                           (bind_transformer.cpp)
#include <torch/python.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "switchyard/config/config.h"
#include "switchyard/nn/moe_layer.h"
#include "switchyard/python/bindings.h"

namespace py = pybind11;

namespace switchyard::python {

void bind_nn(py::module_& m) {
  using nn::MoELayerImpl;
  using nn::MoELayerOptions;
  using nn::MoEOutput;
  py::module_ mod = m.def_submodule("nn", "switchyard C++ modules (switchyard::nn)");

  py::class_<MoELayerOptions> options(mod, "MoELayerOptions",
                                      "Options of one MoE block: the YAML moe: keys plus "
                                      "d_model and init_std (see docs/moe_layer.md).");
  options.def(py::init<>());
  std::vector<std::string> names;
#define SY_BIND_FIELD(type, name)                                \
  options.def_readwrite(#name, &MoELayerOptions::name);           \
  names.emplace_back(#name);
  SWITCHYARD_MOE_OPTION_FIELDS(SY_BIND_FIELD)
#undef SY_BIND_FIELD
  options.attr("field_names") = names;
  options.def("validate", &MoELayerOptions::validate)
      .def("num_router_outputs", &MoELayerOptions::num_router_outputs)
      .def("__repr__", &MoELayerOptions::to_string)
      .def_static("from_config", &nn::moe_options_from_config, py::arg("config"),
                  "The options of a run's MoE blocks: moe: plus model.d_model and model.init_std.");

  py::class_<MoEOutput>(mod, "MoEOutput", "What MoELayer.forward returns (docs/moe_layer.md).")
      .def_readonly("output", &MoEOutput::output)
      .def_readonly("aux_loss", &MoEOutput::aux_loss)
      .def_readonly("load_balancing_loss", &MoEOutput::load_balancing_loss)
      .def_readonly("z_loss", &MoEOutput::z_loss)
      .def_readonly("seq_aux_loss", &MoEOutput::seq_aux_loss)
      .def_readonly("router_logits", &MoEOutput::router_logits)
      .def_readonly("expert_counts", &MoEOutput::expert_counts)
      .def_readonly("expert_load", &MoEOutput::expert_load)
      .def_readonly("num_dropped", &MoEOutput::num_dropped)
      .def_readonly("real_experts_per_token", &MoEOutput::real_experts_per_token);

  py::class_<nn::ExpertParallelism, std::shared_ptr<nn::ExpertParallelism>>(
      mod, "ExpertParallelism", "How an MoELayer runs routed experts spread over ranks.")
      .def_property_readonly("num_experts", &nn::ExpertParallelism::num_experts)
      .def_property_readonly("local_experts", &nn::ExpertParallelism::local_experts);

  // force_enable = true: forward is bound below with its keyword argument and default.
  torch::python::bind_module<MoELayerImpl, /*force_enable=*/true>(mod, "MoELayer")
      .def(py::init<MoELayerOptions>(), py::arg("options"))
      .def("forward", &MoELayerImpl::forward, py::arg("x"),
           py::arg("prev_router_logits") = py::none())
      .def("update_selection_bias", [](MoELayerImpl& layer) { layer.update_selection_bias(); },
           "Apply the aux-loss-free bias update from the loads seen since the last call.")
      .def("update_selection_bias",
           [](MoELayerImpl& layer, const at::Tensor& total_load) { layer.update_selection_bias(total_load); },
           py::arg("total_load"),
           "The same with the loads summed over ranks (pending_load() all-reduced), so every "
           "replica of the router moves identically.")
      .def("pending_load", &MoELayerImpl::pending_load,
           "Routing loads of the training forwards since the last update, [E_total] int64.")
      .def("enable_expert_parallel",
           [](MoELayerImpl& layer, std::shared_ptr<nn::ExpertParallelism> ep) {
             try {
               layer.enable_expert_parallel(std::move(ep));
             } catch (const c10::ValueError& e) {
               throw py::value_error(e.what_without_backtrace());
             }
           },
           py::arg("ep"), "Keep only this rank's experts and dispatch routed tokens through ep.")
      .def("local_expert_ids", &MoELayerImpl::local_expert_ids)
      .def_property_readonly("expert_parallelism", &MoELayerImpl::expert_parallelism,
                             "The ExpertParallel the layer dispatches through (None without expert parallelism).")
      .def("load_global_expert_weights", &MoELayerImpl::load_global_expert_weights,
           py::arg("gate_proj"), py::arg("up_proj"), py::arg("down_proj"),
           "Copy this layer's experts' rows out of full [E, ...] tensors.")
      .def("reset_parameters", &MoELayerImpl::reset_parameters)
      .def_property_readonly("options", &MoELayerImpl::options);

  bind_transformer(mod);
}

}  // namespace switchyard::python
