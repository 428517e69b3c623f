// Python view of switchyard::placement::LivePlacement (switchyard._C.placement.LivePlacement):
// live expert re-placement during training, driven by the trainer (docs/placement.md).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "switchyard/config/config.h"
#include "switchyard/placement/live_placement.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"
#include "switchyard/sharding/sharded_engine.h"

namespace py = pybind11;

namespace switchyard::python {
namespace {

using placement::LivePlacement;
using placement::PlacementDecision;

py::dict decision_dict(const PlacementDecision& d) {
  py::dict out;
  out["step"] = d.step;
  out["reason"] = d.reason;
  out["layers_changed"] = d.layers_changed;
  out["experts_moved"] = d.experts_moved;
  out["bytes_migrated"] = d.bytes_migrated;
  out["solve_seconds"] = d.solve_seconds;
  out["migrate_seconds"] = d.migrate_seconds;
  py::list layers;
  for (const auto& l : d.layers) {
    py::dict x;
    x["layer"] = l.layer;
    x["old_objective"] = l.old_objective;
    x["new_objective"] = l.new_objective;
    x["old_imbalance"] = l.old_imbalance;
    x["new_imbalance"] = l.new_imbalance;
    x["old_cross_rank"] = l.old_cross_rank;
    x["new_cross_rank"] = l.new_cross_rank;
    x["bound"] = l.bound;
    x["gap"] = l.gap;
    x["solve_seconds"] = l.solve_seconds;
    x["status"] = l.status;
    x["adopted"] = l.adopted;
    x["placement"] = l.placement;
    layers.append(x);
  }
  out["layers"] = layers;
  out["text"] = placement::describe(d);
  return out;
}

}  // namespace

void bind_live_placement(py::module_& m) {
  py::module_ p = m.attr("placement").cast<py::module_>();
  // keep_alive<1, 2>: the LivePlacement refers to the engine.
  py::class_<LivePlacement>(p, "LivePlacement",
                            "Re-places every MoE layer's experts during training from measured routing "
                            "(placement: config section; docs/placement.md).")
      .def(py::init([](sharding::ShardedEngine& engine, const config::Config& cfg) {
             return translating([&] { return std::make_unique<LivePlacement>(engine, cfg.placement); });
           }),
           py::arg("engine"), py::arg("config"), py::keep_alive<1, 2>())
      .def("after_step", [](LivePlacement& self, int64_t step) -> py::object {
             const auto d = released([&] { return self.after_step(step); });
             if (!d) return py::none();
             return decision_dict(*d);
           }, py::arg("step"),
           "Call after every optimizer step (step = steps done). Collective. A dict describing the "
           "decision when one was made (its 'text' is the log line), else None.")
      .def("replace_now", [](LivePlacement& self, int64_t step, const std::string& reason) {
             return decision_dict(released([&] { return self.replace_now(step, reason); }));
           }, py::arg("step"), py::arg("reason") = "requested",
           "Solve and re-place now, whatever the schedule. Collective.")
      .def("place_from_trace", [](LivePlacement& self, const std::string& path) {
             return decision_dict(released([&] { return self.place_from_trace(path); }));
           }, py::arg("path"),
           "Solve from a routing trace file and move the experts (before training). Collective.")
      .def("write_trace", [](LivePlacement& self, const std::string& path) {
             released([&] { self.write_trace(path); return 0; });
           }, py::arg("path"), "Write the job's routing trace (world rank 0 writes). Collective.")
      .def_property_readonly("steps", [](const LivePlacement& self) { return self.statistics().steps(); });
}

}  // namespace switchyard::python
