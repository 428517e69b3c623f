#include "switchyard/common/error.h"

namespace switchyard::detail {

void throw_error(const char* file, int line, const std::string& msg) {
  // The user-facing message comes first; the source location is for us.
  throw Error(msg + " [" + file + ":" + std::to_string(line) + "]");
}

}  // namespace switchyard::detail
