// Python view of switchyard::placement (submodule switchyard._C.placement). The public Python
// API is python/switchyard/placement.py; docs/placement.md is the user's page. Matrices cross
// as flat row-major lists; placement.py flattens and checks them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "switchyard/placement/greedy.h"
#include "switchyard/placement/ilp_solver.h"
#include "switchyard/placement/placement_problem.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"

namespace py = pybind11;

namespace switchyard::python {
namespace {

using placement::PlacementProblem;

py::dict cost_dict(const placement::PlacementCost& c) {
  py::dict d;
  d["max_load"] = c.max_load;
  d["mean_load"] = c.mean_load;
  d["imbalance"] = c.imbalance;
  d["cross_rank_tokens"] = c.cross_rank_tokens;
  d["cross_node_tokens"] = c.cross_node_tokens;
  d["traffic_cost"] = c.traffic_cost;
  d["coactivation_reward"] = c.coactivation_reward;
  d["objective"] = c.objective;
  return d;
}

}  // namespace

void bind_placement(py::module_& m) {
  py::module_ p = m.def_submodule("placement", "Expert placement: greedy baselines and the GLPK MILP (docs/placement.md)");
  py::class_<PlacementProblem>(p, "PlacementProblem", "One placement instance (placement_problem.h)")
      .def(py::init<>())
      .def_readwrite("load", &PlacementProblem::load)
      .def_readwrite("num_ranks", &PlacementProblem::num_ranks)
      .def_readwrite("slots_per_rank", &PlacementProblem::slots_per_rank)
      .def_readwrite("traffic", &PlacementProblem::traffic)
      .def_readwrite("coactivation", &PlacementProblem::coactivation)
      .def_readwrite("ranks_per_node", &PlacementProblem::ranks_per_node)
      .def_readwrite("traffic_weight", &PlacementProblem::traffic_weight)
      .def_readwrite("node_factor", &PlacementProblem::node_factor)
      .def_readwrite("coactivation_weight", &PlacementProblem::coactivation_weight)
      .def_readwrite("coactivation_top_k", &PlacementProblem::coactivation_top_k)
      .def("validate", [](const PlacementProblem& pr) { translating([&] { pr.validate(); return 0; }); });
  p.def("greedy",
        [](const PlacementProblem& pr) { return released([&] { return placement::greedy(pr).rank_of_expert(); }); },
        py::arg("problem"), "Longest-processing-time-first placement: the rank of each expert.");
  p.def("contiguous",
        [](const PlacementProblem& pr) { return released([&] { return placement::contiguous(pr).rank_of_expert(); }); },
        py::arg("problem"), "ExpertPlacement.contiguous: the rank of each expert.");
  p.def("evaluate",
        [](const PlacementProblem& pr, const std::vector<int64_t>& rank_of_expert) {
          return cost_dict(released([&] {
            return placement::evaluate(pr, dispatch::ExpertPlacement(rank_of_expert, pr.num_ranks));
          }));
        },
        py::arg("problem"), py::arg("rank_of_expert"));
  p.def("solve",
        [](const PlacementProblem& pr, double time_limit, double mip_gap, bool symmetry_breaking) {
          placement::SolveOptions o;
          o.time_limit_s = time_limit;
          o.mip_gap = mip_gap;
          o.symmetry_breaking = symmetry_breaking;
          const placement::SolveResult r = released([&] { return placement::solve(pr, o); });
          py::dict d = cost_dict(r.cost);
          d["placement"] = r.placement.rank_of_expert();
          d["objective"] = r.objective;
          d["bound"] = r.bound;
          d["gap"] = r.gap;
          d["seconds"] = r.seconds;
          d["status"] = r.status;
          d["improved_on_greedy"] = r.improved_on_greedy;
          return d;
        },
        py::arg("problem"), py::arg("time_limit") = 1.0, py::arg("mip_gap") = 1e-6,
        py::arg("symmetry_breaking") = true);
}

}  // namespace switchyard::python
