// Each subsystem binds itself into the extension; module.cpp only assembles them.
#pragma once

#include <pybind11/pybind11.h>

namespace switchyard::python {

void bind_runtime(pybind11::module_& m);
void bind_config(pybind11::module_& m);
void bind_nn(pybind11::module_& m);
void bind_transformer(pybind11::module_& nn);  // called by bind_nn on _C.nn
void bind_comm(pybind11::module_& m);
void bind_dispatch(pybind11::module_& m);
void bind_sharding(pybind11::module_& m);
void bind_checkpoint(pybind11::module_& m);
void bind_placement(pybind11::module_& m);
void bind_trace(pybind11::module_& m);
void bind_live_placement(pybind11::module_& m);  // after bind_placement
void bind_hf(pybind11::module_& m);

}  // namespace switchyard::python
