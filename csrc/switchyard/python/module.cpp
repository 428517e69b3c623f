// switchyard._C: the pybind11 extension. Loading it also loads libswitchyard, whose static
// initialisers register every torch.ops.switchyard operator.
#include "switchyard/python/bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "switchyard C++ core: runtime, configuration, operators and modules";
  switchyard::python::bind_runtime(m);
  switchyard::python::bind_config(m);
  switchyard::python::bind_nn(m);
}
