// switchyard._C: the pybind11 extension. Loading it also loads libswitchyard, whose static
// initialisers register every torch.ops.switchyard operator.
#include "switchyard/python/bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "switchyard C++ core: runtime, configuration, operators, modules and communication";
  switchyard::python::bind_runtime(m);
  switchyard::python::bind_config(m);
  switchyard::python::bind_nn(m);
  switchyard::python::bind_comm(m);
  switchyard::python::bind_dispatch(m);
  switchyard::python::bind_sharding(m);
  switchyard::python::bind_checkpoint(m);
  switchyard::python::bind_placement(m);
  switchyard::python::bind_trace(m);
  switchyard::python::bind_live_placement(m);
  switchyard::python::bind_hf(m);
}
