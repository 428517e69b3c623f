// The message of the exception a callable throws, for tests that check what an error says.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace switchyard::testing {

// c10::Error's message without its C++ backtrace, any other std::exception's what(), or
// "(no error)" when `f` returns normally.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace switchyard::testing
