// Python view of the language model (switchyard::nn::MoETransformer), bound like MoELayer:
//
//   _C.nn.MoETransformerOptions  every model: field read/write, .moe (MoELayerOptions);
//                                validate(); from_config(cfg)
//   _C.nn.MoETransformer(options) forward(input_ids, targets=None, return_logits=False)
//                                -> TransformerOutput; moe_layers(); update_selection_bias();
//                                the UnitSequence (num_units, unit_name, unit_parameters,
//                                run_unit) for tests and Python drivers
//   _C.nn.TransformerOutput      logits, loss, aux_loss (None where undefined), moe_stats
#include <torch/python.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "switchyard/config/config.h"
#include "switchyard/nn/moe_transformer.h"
#include "switchyard/nn/route_prediction.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"

namespace py = pybind11;

namespace switchyard::python {

namespace {

py::object tensor_or_none(const at::Tensor& t) {
  return t.defined() ? py::cast(t) : py::none();
}

py::dict stats_dict(const std::vector<std::pair<std::string, at::Tensor>>& values) {
  py::dict d;
  for (const auto& [name, t] : values) d[py::str(name)] = t;
  return d;
}

}  // namespace

void bind_transformer(py::module_& mod) {
  using nn::MoETransformerImpl;
  using nn::MoETransformerOptions;
  using nn::TransformerOutput;

  py::class_<MoETransformerOptions> options(
      mod, "MoETransformerOptions",
      "Options of the language model: the YAML model: keys, scale_residual_init, and moe "
      "(MoELayerOptions of its MoE blocks). See docs/model.md.");
  options.def(py::init<>());
  std::vector<std::string> names;
#define SY_BIND_FIELD(type, name)                             \
  options.def_readwrite(#name, &MoETransformerOptions::name); \
  names.emplace_back(#name);
  SWITCHYARD_TRANSFORMER_OPTION_FIELDS(SY_BIND_FIELD)
#undef SY_BIND_FIELD
  options.attr("field_names") = names;
  options.def_readwrite("moe", &MoETransformerOptions::moe)
      .def("validate", &MoETransformerOptions::validate)
      .def("is_moe_layer", &MoETransformerOptions::is_moe_layer, py::arg("layer"))
      .def("__repr__", &MoETransformerOptions::to_string)
      .def_static("from_config", &nn::transformer_options_from_config, py::arg("config"),
                  "The model a run's config describes (its model: and moe: sections).");

  py::class_<TransformerOutput>(mod, "TransformerOutput",
                                "What MoETransformer.forward returns (docs/model.md).")
      .def_property_readonly("logits", [](const TransformerOutput& o) { return tensor_or_none(o.logits); })
      .def_property_readonly("loss", [](const TransformerOutput& o) { return tensor_or_none(o.loss); })
      .def_readonly("aux_loss", &TransformerOutput::aux_loss)
      .def_property_readonly(
          "moe_stats",
          [](const TransformerOutput& o) {
            py::list out;
            for (const auto& s : o.moe_stats) {
              py::dict d = stats_dict(s.values);
              d["layer"] = s.layer;
              out.append(d);
            }
            return out;
          },
          "One dict per MoE block: layer, aux_loss, expert_counts, expert_load, num_dropped, "
          "real_experts_per_token (detached).");

  torch::python::bind_module<MoETransformerImpl, /*force_enable=*/true>(mod, "MoETransformer")
      .def(py::init<MoETransformerOptions>(), py::arg("options"))
      .def("forward", &MoETransformerImpl::forward, py::arg("input_ids"),
           py::arg("targets") = py::none(), py::arg("return_logits") = false)
      .def("moe_layers",
           [](const MoETransformerImpl& m) {
             std::vector<std::shared_ptr<nn::MoELayerImpl>> out;
             for (const auto& layer : m.moe_layers()) out.push_back(layer.ptr());
             return out;
           },
           "The MoE layers (C++ modules), in block order.")
      .def("update_selection_bias", &MoETransformerImpl::update_selection_bias,
           "MoELayer.update_selection_bias on every MoE block; once per optimizer step.")
      .def("reset_parameters", &MoETransformerImpl::reset_parameters)
      .def_property_readonly("options", &MoETransformerImpl::options)
      .def("num_units", &MoETransformerImpl::num_units)
      .def("unit_name", &MoETransformerImpl::unit_name, py::arg("i"))
      .def("unit_parameters",
           [](MoETransformerImpl& m, int64_t i) {
             py::list out;
             for (const auto& p : m.unit_parameters(i)) out.append(py::make_tuple(p.name, p.tensor, p.expert));
             return out;
           },
           py::arg("i"), "[(name, tensor, expert)] of the parameters unit i reads.")
      .def("run_unit",
           [](MoETransformerImpl& m, int64_t i, const std::vector<std::optional<at::Tensor>>& inputs,
              const at::Tensor& input_ids, const std::optional<at::Tensor>& targets) {
             std::vector<at::Tensor> in;
             for (const auto& t : inputs) in.push_back(t.has_value() ? *t : at::Tensor());
             nn::UnitStep step = m.run_unit(i, in, nn::UnitBatch{input_ids, targets.value_or(at::Tensor())});
             py::list outputs;
             for (const auto& t : step.outputs) outputs.append(tensor_or_none(t));
             return py::make_tuple(outputs, tensor_or_none(step.aux_loss), stats_dict(step.stats));
           },
           py::arg("i"), py::arg("inputs"), py::arg("input_ids"), py::arg("targets") = py::none(),
           "Run unit i: -> (outputs, aux_loss or None, stats dict). See unit_sequence.h.")
      .def("predict_routes",
           [](MoETransformerImpl& m, const at::Tensor& input_ids) {
             const auto predictions = translating([&] { return nn::predict_routes(m, input_ids); });
             py::list out;
             for (const auto& p : predictions) {
               py::dict d;
               d["block"] = p.block;
               d["predicted"] = p.predicted_TK;
               d["actual"] = p.actual_TK;
               out.append(d);
             }
             return out;
           },
           py::arg("input_ids"),
           "Cross-layer route prediction (docs/speculation.md): per MoE block after the first "
           "block, {'block', 'predicted', 'actual'} [T, K] expert ids -- its router applied to "
           "the block's input with the attention skipped, against its real routing. Eval mode, "
           "no gradients.");
}

}  // namespace switchyard::python
