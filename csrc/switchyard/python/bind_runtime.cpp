#include <pybind11/pybind11.h>
#include <torch/csrc/Device.h>
#include <torch/csrc/utils/pybind.h>

#include "switchyard/python/bindings.h"
#include "switchyard/runtime/device.h"
#include "switchyard/runtime/host_allocator.h"
#include "switchyard/runtime/runtime.h"

namespace py = pybind11;

namespace switchyard::python {

void bind_runtime(py::module_& m) {
  using runtime::ProcessInfo;
  py::class_<ProcessInfo>(m, "ProcessInfo", "This process's place in the job.")
      .def_readonly("rank", &ProcessInfo::rank)
      .def_readonly("world_size", &ProcessInfo::world_size)
      .def_readonly("local_rank", &ProcessInfo::local_rank)
      .def_readonly("local_size", &ProcessInfo::local_size)
      .def_readonly("hostname", &ProcessInfo::hostname)
      .def_readonly("launched_by_mpirun", &ProcessInfo::launched_by_mpirun)
      .def("__repr__", [](const ProcessInfo& p) {
        return "ProcessInfo(rank=" + std::to_string(p.rank) + ", world_size=" + std::to_string(p.world_size) +
               ", local_rank=" + std::to_string(p.local_rank) + ", hostname='" + p.hostname + "')";
      });
  m.def("init", &runtime::init, py::return_value_policy::copy,
        "Initialise MPI once and return this process's ProcessInfo.");
  m.def("is_initialized", &runtime::is_initialized);
  m.def("tune_host_allocator", &runtime::tune_host_allocator,
        "Keep large host buffers in the heap between steps (glibc); init() does it too. "
        "Returns whether the setting is in effect.");
  m.def("finalize", &runtime::finalize, "Finalise MPI (idempotent).");
  m.def("select_device", &runtime::select_device,
        "The CUDA device of this rank's local rank when a GPU is visible, else the CPU.");
  m.def("fatal", &runtime::fatal, py::arg("message"),
        "Print the message with this rank and abort the whole job (MPI_Abort). Never returns.");
  m.def("rank_tag", &runtime::rank_tag);
  m.def("cuda_built", []() {
#ifdef SWITCHYARD_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernels were compiled into this build.");
}

}  // namespace switchyard::python
