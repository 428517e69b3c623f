// C++ exceptions -> Python exceptions, for the bindings that call into torch-level code:
// c10::ValueError / switchyard::Error -> ValueError, c10::TypeError -> TypeError,
// c10::IndexError -> IndexError, any other c10::Error -> RuntimeError; messages without the
// C++ backtrace. released() also drops the GIL, for collectives and file I/O.
#pragma once

#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>

#include "switchyard/common/error.h"

namespace switchyard::python {

template <typename F>
auto translating(F&& f) -> decltype(f()) {
  namespace py = pybind11;
  try {
    return f();
  } catch (const c10::ValueError& e) {
    throw py::value_error(e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    throw py::type_error(e.what_without_backtrace());
  } catch (const c10::IndexError& e) {
    throw py::index_error(e.what_without_backtrace());
  } catch (const switchyard::Error& e) {
    throw py::value_error(e.what());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    throw py::error_already_set();
  }
}

template <typename F>
auto released(F&& f) -> decltype(f()) {
  return translating([&] {
    pybind11::gil_scoped_release no_gil;
    return f();
  });
}

}  // namespace switchyard::python
