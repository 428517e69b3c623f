// Python view of switchyard::comm (submodule switchyard._C.comm): the Communicator, its
// Work handles and the ProcessGroups of a config. python/switchyard/comm.py documents and
// re-exports them; docs/communication.md is the user's page.
//
//   world = _C.comm.Communicator.world()
//   out = world.all_to_all_v(x, [2, 1], [1, 3])                # blocking: a tensor
//   work = world.all_reduce(g, "avg", async_op=True); work.wait()
//
// The GIL is released while a collective runs, so other Python threads (data loading)
// progress while a rank waits for its peers.
#include <optional>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "switchyard/comm/communicator.h"
#include "switchyard/comm/mpi_backend.h"
#include "switchyard/comm/process_groups.h"
#include "switchyard/common/error.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"

namespace py = pybind11;

namespace switchyard::python {
namespace {

using comm::Communicator;
using comm::ProcessGroups;
using comm::Work;
using comm::WorkHandle;

// Runs `f` without the GIL (translate_errors.h) and returns its result as a Python object,
// so one binding can return a Work handle or a tensor. A failed collective never gets here:
// it aborts the job.
template <typename F>
py::object released_object(F&& f) {
  return py::cast(python::released(std::forward<F>(f)));
}

at::Tensor or_undefined(const std::optional<at::Tensor>& t) { return t.value_or(at::Tensor()); }

}  // namespace

void bind_comm(py::module_& m) {
  py::module_ c = m.def_submodule("comm", "Communicator, Work and ProcessGroups (see switchyard.comm)");

  py::class_<Work, WorkHandle>(c, "Work",
                               "Handle of a non-blocking collective. CPU/MPI: wait() blocks until the result "
                               "is in place. CUDA/NCCL: wait() makes the current stream wait; the host does "
                               "not block.")
      .def("wait", [](Work& w) { translating([&] {
             py::gil_scoped_release no_gil;
             w.wait();
           }); }, "Wait for completion (see the class doc). Idempotent.")
      .def("is_completed", [](Work& w) { return translating([&] { return w.is_completed(); }); },
           "True once the collective has finished; never blocks.")
      .def_property_readonly("result", [](const Work& w) -> py::object {
             if (!w.result().defined()) return py::none();
             return py::cast(w.result());
           }, "The output tensor (the tensor itself for all_reduce / broadcast). Read it after wait().");

  py::class_<Communicator>(c, "Communicator", "A group of ranks and the collectives on tensors.")
      .def_static("world", [] { return released_object([] { return Communicator::world(); }); },
                  "A new communicator over every rank (MPI_Comm_dup of MPI_COMM_WORLD). Collective.")
      .def("split", [](const Communicator& self, int color, int key, const std::string& name) {
             return released_object([&] { return self.split(color, key, name); });
           }, py::arg("color"), py::arg("key"), py::arg("name"),
           "Ranks passing the same color form a new group, ordered by key (MPI_Comm_split). Collective.")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("name", &Communicator::name)
      .def_property_readonly("world_ranks", &Communicator::world_ranks)
      .def_property("backend",
                    [](const Communicator& self) { return std::string(comm::backend_choice_name(self.backend_choice())); },
                    [](Communicator& self, const std::string& name) {
                      translating([&] { self.set_backend_choice(comm::parse_backend_choice(name)); });
                    })
      .def("describe", &Communicator::describe)
      .def("__repr__", [](const Communicator& self) { return "<Communicator " + self.describe() + ">"; })
      .def("all_to_all_v",
           [](Communicator& self, const at::Tensor& send, std::vector<int64_t> send_splits,
              std::vector<int64_t> recv_splits, std::optional<at::Tensor> out, bool async_op) -> py::object {
             if (async_op) return released_object([&] { return self.all_to_all_v_async(send, send_splits, recv_splits, or_undefined(out)); });
             return released_object([&] { return self.all_to_all_v(send, send_splits, recv_splits, or_undefined(out)); });
           },
           py::arg("send"), py::arg("send_splits"), py::arg("recv_splits"), py::arg("out") = py::none(),
           py::arg("async_op") = false)
      .def("send_recv",
           [](Communicator& self, const at::Tensor& send, std::vector<int64_t> send_splits,
              std::vector<int64_t> recv_splits, std::optional<at::Tensor> out, bool async_op) -> py::object {
             if (async_op) return released_object([&] { return self.send_recv_async(send, send_splits, recv_splits, or_undefined(out)); });
             return released_object([&] { return self.send_recv(send, send_splits, recv_splits, or_undefined(out)); });
           },
           py::arg("send"), py::arg("send_splits"), py::arg("recv_splits"), py::arg("out") = py::none(),
           py::arg("async_op") = false,
           "Point-to-point, not collective: only pairs with non-zero splits exchange rows.")
      .def("all_gather",
           [](Communicator& self, const at::Tensor& input, std::optional<at::Tensor> out, bool async_op) -> py::object {
             if (async_op) return released_object([&] { return self.all_gather_async(input, or_undefined(out)); });
             return released_object([&] { return self.all_gather(input, or_undefined(out)); });
           },
           py::arg("input"), py::arg("out") = py::none(), py::arg("async_op") = false)
      .def("reduce_scatter",
           [](Communicator& self, const at::Tensor& input, const std::string& op, std::optional<at::Tensor> out,
              bool async_op) -> py::object {
             const auto rop = translating([&] { return comm::parse_reduce_op(op); });
             if (async_op) return released_object([&] { return self.reduce_scatter_async(input, rop, or_undefined(out)); });
             return released_object([&] { return self.reduce_scatter(input, rop, or_undefined(out)); });
           },
           py::arg("input"), py::arg("op") = "sum", py::arg("out") = py::none(), py::arg("async_op") = false)
      .def("all_reduce",
           [](Communicator& self, const at::Tensor& tensor, const std::string& op, bool async_op) -> py::object {
             const auto rop = translating([&] { return comm::parse_reduce_op(op); });
             if (async_op) return released_object([&] { return self.all_reduce_async(tensor, rop); });
             released_object([&] { self.all_reduce(tensor, rop); return 0; });
             return py::none();
           },
           py::arg("tensor"), py::arg("op") = "sum", py::arg("async_op") = false)
      .def("broadcast",
           [](Communicator& self, const at::Tensor& tensor, int root, bool async_op) -> py::object {
             if (async_op) return released_object([&] { return self.broadcast_async(tensor, root); });
             released_object([&] { self.broadcast(tensor, root); return 0; });
             return py::none();
           },
           py::arg("tensor"), py::arg("root") = 0, py::arg("async_op") = false)
      .def("barrier",
           [](Communicator& self, bool async_op) -> py::object {
             if (async_op) return released_object([&] { return self.barrier_async(); });
             released_object([&] { self.barrier(); return 0; });
             return py::none();
           },
           py::arg("async_op") = false);

  py::class_<ProcessGroups>(c, "ProcessGroups",
                            "The job's groups from the parallel: config (docs/communication.md, group layout).")
      .def_static("create", [](const config::Config& config, const Communicator& world) {
             return released_object([&] { return ProcessGroups::create(config, world); });
           }, py::arg("config"), py::arg("world"))
      .def_readonly("world", &ProcessGroups::world)
      .def_readonly("expert_parallel", &ProcessGroups::expert_parallel)
      .def_readonly("expert_data_parallel", &ProcessGroups::expert_data_parallel)
      .def_readonly("data_parallel", &ProcessGroups::data_parallel)
      .def_readonly("expert_parallel_size", &ProcessGroups::expert_parallel_size)
      .def_readonly("data_parallel_size", &ProcessGroups::data_parallel_size);

  c.def("_set_max_mpi_count_for_testing", &comm::detail::set_max_mpi_count_for_testing, py::arg("limit"),
        "Tests only: lower MPI's per-call count limit (<= 0 restores INT_MAX); returns the previous one.");
}

}  // namespace switchyard::python
