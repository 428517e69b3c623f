// Error reporting for the parts of switchyard that do not depend on torch (config,
// runtime, kernels' host code). Code that does include torch uses TORCH_CHECK.
//
// Every check carries a message; the thrown switchyard::Error is translated to a Python
// exception by the bindings, and to a job-wide abort by switchyard::fatal().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace switchyard {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
template <typename... Args>
std::string str_cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace switchyard

// SWITCHYARD_CHECK(cond, "expected ", what, ", got ", x): throws switchyard::Error.
#define SWITCHYARD_CHECK(cond, ...)                                                   \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      ::switchyard::detail::throw_error(__FILE__, __LINE__,                           \
                                        ::switchyard::detail::str_cat(__VA_ARGS__));  \
    }                                                                                 \
  } while (0)

#define SWITCHYARD_FAIL(...) \
  ::switchyard::detail::throw_error(__FILE__, __LINE__, ::switchyard::detail::str_cat(__VA_ARGS__))
