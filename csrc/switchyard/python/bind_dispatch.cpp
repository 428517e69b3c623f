// Python view of switchyard::dispatch (submodule switchyard._C.dispatch): expert
// placements, the ExpertParallel strategy an MoELayer takes in enable_expert_parallel, its
// dispatch statistics, and the start-up config check. python/switchyard/dispatch.py
// re-exports them; docs/dispatch.md is the user's page.
#include <optional>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "switchyard/common/error.h"
#include "switchyard/config/config.h"
#include "switchyard/dispatch/config_check.h"
#include "switchyard/dispatch/expert_parallel.h"
#include "switchyard/dispatch/expert_placement.h"
#include "switchyard/dispatch/token_dispatcher.h"
#include "switchyard/ops/routing.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"

namespace py = pybind11;

namespace switchyard::python {
namespace {

py::dict stats_dict(const dispatch::DispatchStats& s) {
  py::dict d;
#define SY_STAT(name) d[#name] = s.name;
  SY_STAT(rows_sent) SY_STAT(slots_sent) SY_STAT(remote_rows_sent) SY_STAT(remote_slots_sent)
  SY_STAT(rows_received) SY_STAT(slots_received) SY_STAT(bytes_dispatched)
  SY_STAT(bytes_dispatched_without_dedup) SY_STAT(bytes_combined)
  SY_STAT(bytes_combined_without_dedup) SY_STAT(collectives) SY_STAT(host_syncs)
  SY_STAT(host_syncs_before_payload) SY_STAT(bytes_moved) SY_STAT(padding_bytes)
  SY_STAT(bytes_combine_sent) SY_STAT(speculative) SY_STAT(second_round)
  SY_STAT(overflow_rows_sent) SY_STAT(overflow_rows_received)
#undef SY_STAT
  return d;
}

py::dict counters_dict(const dispatch::SpeculationCounters& c) {
  py::dict d;
#define SY_COUNT(name) d[#name] = c.name;
  SY_COUNT(dispatches) SY_COUNT(speculative_dispatches) SY_COUNT(collectives) SY_COUNT(host_syncs)
  SY_COUNT(host_syncs_before_payload) SY_COUNT(remote_rows_sent) SY_COUNT(remote_slots_sent) SY_COUNT(bytes_moved) SY_COUNT(padding_bytes)
  SY_COUNT(second_rounds) SY_COUNT(overflow_rows_sent) SY_COUNT(overflow_rows_received)
  SY_COUNT(route_predicted_dispatches) SY_COUNT(prediction_collectives) SY_COUNT(prediction_host_syncs)
#undef SY_COUNT
  return d;
}

// switchyard.ops.Routing (a NamedTuple of 9 tensors, in the C++ struct's order) -> ops::Routing.
ops::Routing to_routing(const py::sequence& r) {
  if (py::len(r) != 9) throw py::type_error("expected a switchyard.ops.Routing (9 tensors)");
  ops::Routing out;
  at::Tensor* fields[] = {&out.topk_weights, &out.topk_experts, &out.token_index, &out.expert_index,
                          &out.slot_index, &out.slot_weights, &out.expert_counts, &out.expert_load,
                          &out.num_dropped};
  for (size_t i = 0; i < 9; ++i) *fields[i] = r[i].cast<at::Tensor>();
  return out;
}

}  // namespace

void bind_dispatch(py::module_& m) {
  using dispatch::ExpertParallel;
  using dispatch::ExpertPlacement;
  py::module_ d = m.def_submodule("dispatch", "expert placement and the expert-parallel dispatcher");

  py::class_<ExpertPlacement>(d, "ExpertPlacement",
                              "Which rank of the expert-parallel group holds each routed expert.")
      .def(py::init([](std::vector<int64_t> map, int64_t num_ranks) {
             return translating([&] { return ExpertPlacement(std::move(map), num_ranks); });
           }),
           py::arg("rank_of_expert"), py::arg("num_ranks"))
      .def_static("contiguous", [](int64_t e, int64_t r) {
             return translating([&] { return ExpertPlacement::contiguous(e, r); });
           }, py::arg("num_experts"), py::arg("num_ranks"))
      .def_property_readonly("num_experts", &ExpertPlacement::num_experts)
      .def_property_readonly("num_ranks", &ExpertPlacement::num_ranks)
      .def_property_readonly("rank_of_expert", &ExpertPlacement::rank_of_expert)
      .def("local_experts", [](const ExpertPlacement& p, int64_t r) {
             return translating([&] { return p.local_experts(r); });
           }, py::arg("rank"))
      .def("hash", &ExpertPlacement::hash)
      .def("__eq__", [](const ExpertPlacement& a, const ExpertPlacement& b) { return a == b; })
      .def("__repr__", &ExpertPlacement::to_string);

  using dispatch::SpeculationOptions;
  py::class_<SpeculationOptions>(d, "SpeculationOptions",
                                 "The speculation: config section (docs/speculation.md).")
      .def(py::init([](bool capacity, double margin, bool routes) {
             SpeculationOptions o;
             o.capacity = capacity;
             o.capacity_margin = margin;
             o.routes = routes;
             translating([&] { o.validate(); return 0; });
             return o;
           }),
           py::arg("capacity") = SpeculationOptions{}.capacity,
           py::arg("capacity_margin") = SpeculationOptions{}.capacity_margin,
           py::arg("routes") = SpeculationOptions{}.routes)
      .def_static("from_config", [](const config::Config& c) {
             return translating([&] { return dispatch::speculation_options_from_config(c); });
           }, py::arg("config"))
      .def_readwrite("capacity", &SpeculationOptions::capacity)
      .def_readwrite("capacity_margin", &SpeculationOptions::capacity_margin)
      .def_readwrite("routes", &SpeculationOptions::routes)
      .def("__repr__", [](const SpeculationOptions& o) { return "SpeculationOptions(" + o.to_string() + ")"; });

  py::class_<ExpertParallel, nn::ExpertParallelism, std::shared_ptr<ExpertParallel>>(
      d, "ExpertParallel",
      "Runs an MoELayer's routed experts over an expert-parallel group (all-to-all dispatch).")
      .def(py::init([](comm::Communicator group, ExpertPlacement placement,
                       std::optional<SpeculationOptions> speculation) {
             return released([&] {
               return std::make_shared<ExpertParallel>(std::move(group), std::move(placement),
                                                       speculation.value_or(SpeculationOptions{}));
             });
           }),
           py::arg("group"), py::arg("placement"), py::arg("speculation") = py::none())
      .def_property("speculation", &ExpertParallel::speculation,
                    [](ExpertParallel& e, SpeculationOptions o) {
                      released([&] { e.set_speculation(o); return 0; });
                    },
                    "SpeculationOptions; setting it is collective over the group and forgets the "
                    "capacity history.")
      .def_property_readonly("counters", [](const ExpertParallel& e) { return counters_dict(e.counters()); },
                             "Cumulative SpeculationCounters of this rank's forwards, as a dict.")
      .def("reset_counters", &ExpertParallel::reset_counters)
      .def_property_readonly("wants_route_prediction", &ExpertParallel::wants_route_prediction)
      .def("prepare_routes", [](ExpertParallel& e, const at::Tensor& predicted) {
             released([&] { e.prepare_routes(predicted); return 0; });
           }, py::arg("predicted_experts"),
           "Speculative routing: predicted global expert ids [T, K] (int64) for the next forward's "
           "tokens; starts exchanging the counts they imply (collective). Any prediction gives the "
           "same results; a good one avoids second rounds.")
      .def_property_readonly("last_splits", [](const ExpertParallel& e) {
             return py::make_tuple(e.last_send_splits(), e.last_recv_splits());
           }, "(rows sent to each rank, rows received from each rank) in the latest forward.")
      .def("set_placement", [](ExpertParallel& e, ExpertPlacement p) {
             released([&] { e.set_placement(std::move(p)); return 0; });
           }, py::arg("placement"),
           "Route through a new placement from the next forward (collective; forgets the capacity history).")
      .def_property_readonly("placement", [](const ExpertParallel& e) { return e.dispatcher().placement(); })
      .def_property_readonly("last_stats", [](const ExpertParallel& e) -> py::object {
        if (!e.last_stats()) return py::none();
        return stats_dict(*e.last_stats());
      }, "DispatchStats of the latest forward on this rank as a dict (None before the first).");

  using dispatch::DispatchHandle;
  using dispatch::TokenDispatcher;
  py::class_<DispatchHandle, std::shared_ptr<DispatchHandle>>(
      d, "DispatchHandle", "What TokenDispatcher.combine needs; immutable.")
      .def_property_readonly("stats", [](const DispatchHandle& h) { return stats_dict(h.stats); })
      .def_property_readonly("send_splits", [](const DispatchHandle& h) { return h.send_splits; })
      .def_property_readonly("recv_splits", [](const DispatchHandle& h) { return h.recv_splits; })
      .def_property_readonly("local_counts", [](const DispatchHandle& h) { return h.local_counts; });
  py::class_<TokenDispatcher>(d, "TokenDispatcher",
                              "All-to-all token dispatcher over an expert-parallel group.")
      .def(py::init([](comm::Communicator group, ExpertPlacement placement) {
             return translating([&] { return TokenDispatcher(std::move(group), std::move(placement)); });
           }),
           py::arg("group"), py::arg("placement"))
      .def("dispatch",
           [](const TokenDispatcher& self, const at::Tensor& x, const py::sequence& routing,
              std::optional<std::pair<std::vector<int64_t>, std::vector<int64_t>>> capacities) {
             const ops::Routing r = to_routing(routing);
             std::optional<dispatch::PairCapacities> caps;
             if (capacities) caps = dispatch::PairCapacities{capacities->first, capacities->second};
             dispatch::DispatchResult res =
                 translating([&] { return self.dispatch(x, r, caps ? &*caps : nullptr); });
             return py::make_tuple(std::const_pointer_cast<DispatchHandle>(res.handle),
                                   res.expert_rows, res.local_counts);
           },
           py::arg("x"), py::arg("routing"), py::arg("capacities") = py::none(),
           "-> (handle, expert_rows grouped by local expert, local_counts). Collective. "
           "capacities: (send [R], recv [R]) rows per pair for the speculative-capacity path "
           "(send[r] on rank s must equal recv[s] on rank r); None: the exact path.")
      .def("combine",
           [](const TokenDispatcher& self, const DispatchHandle& h, const at::Tensor& rows) {
             return translating([&] { return self.combine(h, rows); });
           },
           py::arg("handle"), py::arg("expert_rows"), "-> y [T, d]. Collective.");

  d.def("check_same_config",
        [](comm::Communicator group, const config::Config& cfg, std::optional<ExpertPlacement> p) {
          try {
            py::gil_scoped_release no_gil;
            dispatch::check_same_config(std::move(group), cfg, p ? &*p : nullptr);
          } catch (const Error& e) {
            throw py::value_error(e.what());
          }
        },
        py::arg("group"), py::arg("config"), py::arg("placement") = py::none(),
        "Collective: raises ValueError on every rank when the ranks' model/moe/parallel "
        "config or expert placement differ, naming the ranks and the keys.");
}

}  // namespace switchyard::python
