// Python view of switchyard::placement (submodule switchyard._C.placement). The public Python
// API is python/switchyard/placement.py; docs/placement.md is the user's page. Matrices cross
// as flat row-major lists; placement.py flattens and checks them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "switchyard/placement/cost_model.h"
#include "switchyard/placement/greedy.h"
#include "switchyard/placement/ilp_solver.h"
#include "switchyard/placement/placement_problem.h"
#include "switchyard/placement/replicated.h"
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

placement::ReplicatedPlacement replicated(const PlacementProblem& pr, const std::vector<std::vector<int64_t>>& hosts,
                                          const std::vector<std::vector<double>>& shares) {
  placement::ReplicatedPlacement p;
  p.num_ranks = pr.num_ranks;
  p.hosts = hosts;
  p.shares = shares;
  return p;
}

// The fields both solvers report besides the placement and its cost.
template <class Result>
void add_solve_fields(py::dict& d, const Result& r) {
  d["objective"] = r.objective;
  d["bound"] = r.bound;
  d["gap"] = r.gap;
  d["seconds"] = r.seconds;
  d["status"] = r.status;
  d["improved_on_greedy"] = r.improved_on_greedy;
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
      .def_readwrite("replica_budget", &PlacementProblem::replica_budget)
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
          add_solve_fields(d, r);
          return d;
        },
        py::arg("problem"), py::arg("time_limit") = 1.0, py::arg("mip_gap") = 1e-6,
        py::arg("symmetry_breaking") = true);
  p.def("greedy_replicated",
        [](const PlacementProblem& pr) {
          const placement::ReplicatedPlacement r = released([&] { return placement::greedy_replicated(pr); });
          return py::make_tuple(r.hosts, r.shares);
        },
        py::arg("problem"), "LPT with splitting of the hottest experts: (hosts, shares) per expert.");
  p.def("evaluate_replicated",
        [](const PlacementProblem& pr, const std::vector<std::vector<int64_t>>& hosts,
           const std::vector<std::vector<double>>& shares) {
          return cost_dict(released([&] { return placement::evaluate(pr, replicated(pr, hosts, shares)); }));
        },
        py::arg("problem"), py::arg("hosts"), py::arg("shares"));
  p.def("check_fits",
        [](const PlacementProblem& pr, const std::vector<std::vector<int64_t>>& hosts,
           const std::vector<std::vector<double>>& shares) {
          translating([&] { replicated(pr, hosts, shares).check_fits(pr); return 0; });
        },
        py::arg("problem"), py::arg("hosts"), py::arg("shares"));
  p.def("rank_loads",
        [](const PlacementProblem& pr, const std::vector<std::vector<int64_t>>& hosts,
           const std::vector<std::vector<double>>& shares) {
          return released([&] { return placement::rank_loads(pr, replicated(pr, hosts, shares)); });
        },
        py::arg("problem"), py::arg("hosts"), py::arg("shares"));
  p.def("rank_traffic",
        [](const PlacementProblem& pr, const std::vector<std::vector<int64_t>>& hosts,
           const std::vector<std::vector<double>>& shares) {
          return released([&] { return placement::rank_traffic(pr, replicated(pr, hosts, shares)); });
        },
        py::arg("problem"), py::arg("hosts"), py::arg("shares"));
  p.def("solve_replicated",
        [](const PlacementProblem& pr, double time_limit, double mip_gap, bool symmetry_breaking) {
          placement::SolveOptions o;
          o.time_limit_s = time_limit;
          o.mip_gap = mip_gap;
          o.symmetry_breaking = symmetry_breaking;
          const placement::ReplicatedSolveResult r = released([&] { return placement::solve_replicated(pr, o); });
          py::dict d = cost_dict(r.cost);
          d["hosts"] = r.placement.hosts;
          d["shares"] = r.placement.shares;
          d["copies"] = r.placement.num_copies();
          add_solve_fields(d, r);
          return d;
        },
        py::arg("problem"), py::arg("time_limit") = 1.0, py::arg("mip_gap") = 1e-6,
        py::arg("symmetry_breaking") = true);

  py::class_<placement::CostModel>(p, "CostModel", "Projected MoE-layer time parameters (cost_model.h)")
      .def(py::init<>())
      .def_readwrite("hidden_size", &placement::CostModel::hidden_size)
      .def_readwrite("dtype_bytes", &placement::CostModel::dtype_bytes)
      .def_readwrite("flops_per_token", &placement::CostModel::flops_per_token)
      .def_readwrite("rank_flops", &placement::CostModel::rank_flops)
      .def_readwrite("alpha_intra_s", &placement::CostModel::alpha_intra_s)
      .def_readwrite("beta_intra_Bps", &placement::CostModel::beta_intra_Bps)
      .def_readwrite("alpha_inter_s", &placement::CostModel::alpha_inter_s)
      .def_readwrite("beta_inter_Bps", &placement::CostModel::beta_inter_Bps)
      .def_readwrite("ranks_per_node", &placement::CostModel::ranks_per_node)
      .def("validate", [](const placement::CostModel& c) { translating([&] { c.validate(); return 0; }); });
  p.def("project_layer_time",
        [](const std::vector<double>& rank_load, const std::vector<double>& rank_traffic,
           const placement::CostModel& model) {
          const placement::LayerTime t =
              released([&] { return placement::project_layer_time(rank_load, rank_traffic, model); });
          py::dict d;
          d["compute_s"] = t.compute_s;
          d["all_to_all_s"] = t.all_to_all_s;
          d["total_s"] = t.total_s;
          d["compute_rank"] = t.compute_rank;
          d["all_to_all_rank"] = t.all_to_all_rank;
          d["max_send_bytes"] = t.max_send_bytes;
          return d;
        },
        py::arg("rank_load"), py::arg("rank_traffic"), py::arg("model"));
}

}  // namespace switchyard::python
