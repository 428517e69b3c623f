// Python view of the routing statistics and trace files (submodule switchyard._C.trace). The
// public Python API is python/switchyard/trace.py; docs/routing_trace.md is the user's page.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "switchyard/comm/communicator.h"
#include "switchyard/nn/moe_layer.h"
#include "switchyard/placement/routing_statistics.h"
#include "switchyard/placement/routing_trace.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"

namespace py = pybind11;

namespace switchyard::python {
namespace {

using placement::LayerStatistics;
using placement::RoutingStatistics;

std::shared_ptr<torch::nn::Module> module_of(const py::object& model) {
  py::object cpp = py::hasattr(model, "cpp_module") ? model.attr("cpp_module") : model;
  try {
    return cpp.cast<std::shared_ptr<torch::nn::Module>>();
  } catch (const py::cast_error&) {
    throw py::type_error("RoutingStatistics.attach: expected a switchyard C++ model (a module with "
                         ".cpp_module, or a bound C++ module), got " +
                         py::str(py::type::of(model)).cast<std::string>());
  }
}

py::dict layer_dict(const LayerStatistics& st) {
  py::dict d;
  d["num_experts"] = st.num_experts;
  d["tokens"] = st.tokens.clone();
  d["tokens_ema"] = st.tokens_ema.clone();
  d["traffic"] = st.traffic.clone();
  d["coactivation"] = st.coactivation.clone();
  d["transitions"] = st.transitions.defined() ? py::cast(st.transitions.clone()) : py::none();
  d["transitions_skipped"] = st.transitions_skipped;
  return d;
}

py::list info_list(const RoutingStatistics& s) {
  py::list out;
  for (const placement::LayerInfo& i : s.layer_info()) {
    py::dict d;
    d["name"] = i.name;
    d["top_k"] = i.top_k;
    d["d_model"] = i.d_model;
    d["router"] = i.router;
    out.append(d);
  }
  return out;
}

}  // namespace

void bind_trace(py::module_& m) {
  py::module_ t = m.def_submodule("trace", "Routing statistics and routing trace files (docs/routing_trace.md)");
  py::class_<RoutingStatistics, std::shared_ptr<RoutingStatistics>>(
      t, "RoutingStatistics", "Per-MoE-layer routing counts (placement/routing_statistics.h)")
      .def(py::init([](std::vector<int64_t> experts, int64_t ranks, int64_t rank, double decay) {
             return translating([&] { return std::make_shared<RoutingStatistics>(std::move(experts), ranks, rank, decay); });
           }),
           py::arg("experts_per_layer"), py::arg("num_source_ranks") = 1, py::arg("source_rank") = 0,
           py::arg("ema_decay") = 0.9)
      .def("record",
           [](RoutingStatistics& s, int64_t layer, const at::Tensor& topk, const at::Tensor& kept) {
             translating([&] { s.record(layer, topk, kept); return 0; });
           },
           py::arg("layer"), py::arg("topk_experts"), py::arg("kept"))
      .def("end_step", [](RoutingStatistics& s) { translating([&] { s.end_step(); return 0; }); })
      .def("reset", [](RoutingStatistics& s) { translating([&] { s.reset(); return 0; }); })
      .def_property_readonly("steps", &RoutingStatistics::steps)
      .def_property_readonly("num_layers", &RoutingStatistics::num_layers)
      .def_property_readonly("num_source_ranks", &RoutingStatistics::num_source_ranks)
      .def_property_readonly("source_rank", &RoutingStatistics::source_rank)
      .def_property_readonly("ema_decay", &RoutingStatistics::ema_decay)
      .def_property_readonly("experts_per_layer", &RoutingStatistics::experts_per_layer)
      .def_property_readonly("layer_info", &info_list)
      .def("layer", [](const RoutingStatistics& s, int64_t l) { return layer_dict(translating([&] { return s.layer(l); })); },
           py::arg("layer"))
      .def("clone", [](const RoutingStatistics& s) { return std::make_shared<RoutingStatistics>(s.clone()); })
      .def("reduced",
           [](const RoutingStatistics& s, const comm::Communicator& group) {
             return std::make_shared<RoutingStatistics>(released([&] { return s.reduced(group); }));
           },
           py::arg("group"))
      .def("attach",
           [](RoutingStatistics& s, const py::object& model) {
             const std::shared_ptr<torch::nn::Module> mod = module_of(model);
             return translating([&] { return s.attach(*mod); });
           },
           py::arg("model"))
      .def_static("detach", [](const py::object& model) { RoutingStatistics::detach(*module_of(model)); },
                  py::arg("model"))
      .def("placement_problem",
           [](const RoutingStatistics& s, int64_t l, bool use_ema) {
             return translating([&] { return s.placement_problem(l, use_ema); });
           },
           py::arg("layer"), py::arg("use_ema") = true);

  t.def("moe_layers",
        [](const py::object& model) {
          const std::shared_ptr<torch::nn::Module> mod = module_of(model);
          py::list out;
          for (const auto& [name, ptr] : placement::find_moe_layers(*mod)) {
            const auto* layer = dynamic_cast<const nn::MoELayerImpl*>(ptr ? ptr.get() : mod.get());
            py::dict d;
            d["name"] = name;
            d["num_experts"] = layer->options().num_experts;
            d["top_k"] = layer->options().top_k;
            d["router"] = layer->options().router;
            d["observed"] = layer->has_routing_observer();
            out.append(d);
          }
          return out;
        },
        py::arg("model"), "The MoE layers of a model in forward order: name, num_experts, top_k, router.");
  t.def("save_trace",
        [](const std::string& path, const RoutingStatistics& s, int64_t world_size, const std::string& note) {
          placement::TraceCreation c;
          c.world_size = world_size;
          c.note = note;
          released([&] { placement::save_trace(path, s, c); return 0; });
        },
        py::arg("path"), py::arg("statistics"), py::arg("world_size") = 0, py::arg("note") = "");
  t.def("load_trace",
        [](const std::string& path) {
          placement::RoutingTrace tr = released([&] { return placement::load_trace(path); });
          py::dict d;
          d["path"] = tr.path;
          d["format_version"] = tr.format_version;
          d["total_tokens"] = tr.total_tokens;
          py::dict c;
          c["unix_time"] = tr.created.unix_time;
          c["utc"] = tr.created.utc;
          c["host"] = tr.created.host;
          c["world_size"] = tr.created.world_size;
          c["note"] = tr.created.note;
          d["created"] = c;
          d["statistics"] = std::make_shared<RoutingStatistics>(std::move(tr.statistics));
          return d;
        },
        py::arg("path"));
  t.def("check_trace_matches",
        [](const std::string& path, const RoutingStatistics& s, const std::vector<int64_t>& experts,
           int64_t num_ranks) {
          // A RoutingTrace needs its own statistics: a copy (small: [E,E] per layer).
          translating([&] {
            placement::RoutingTrace tr{path, placement::kRoutingTraceFormatVersion, s.clone(), {}, {}};
            placement::check_trace_matches(tr, experts, num_ranks);
            return 0;
          });
        },
        py::arg("path"), py::arg("statistics"), py::arg("experts_per_layer"), py::arg("num_ranks"));
}

}  // namespace switchyard::python
