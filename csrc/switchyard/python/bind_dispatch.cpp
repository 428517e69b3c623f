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
  SY_STAT(bytes_combined_without_dedup)
#undef SY_STAT
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

  py::class_<ExpertParallel, nn::ExpertParallelism, std::shared_ptr<ExpertParallel>>(
      d, "ExpertParallel",
      "Runs an MoELayer's routed experts over an expert-parallel group (all-to-all dispatch).")
      .def(py::init([](comm::Communicator group, ExpertPlacement placement) {
             return translating([&] {
               return std::make_shared<ExpertParallel>(std::move(group), std::move(placement));
             });
           }),
           py::arg("group"), py::arg("placement"))
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
           [](const TokenDispatcher& self, const at::Tensor& x, const py::sequence& routing) {
             const ops::Routing r = to_routing(routing);
             dispatch::DispatchResult res = translating([&] { return self.dispatch(x, r); });
             return py::make_tuple(std::const_pointer_cast<DispatchHandle>(res.handle),
                                   res.expert_rows, res.local_counts);
           },
           py::arg("x"), py::arg("routing"),
           "-> (handle, expert_rows grouped by local expert, local_counts). Collective.")
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
