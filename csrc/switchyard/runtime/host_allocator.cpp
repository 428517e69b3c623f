#include "switchyard/runtime/host_allocator.h"

#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace switchyard::runtime {

bool tune_host_allocator() {
  static std::once_flag once;
  static bool applied = false;
  std::call_once(once, [] {
    const char* choice = std::getenv("SWITCHYARD_HOST_ALLOCATOR");
    if (choice != nullptr && std::strcmp(choice, "system") == 0) return;
#if defined(__GLIBC__)
    constexpr int kMmapThreshold = 1 << 30;  // 1 GiB: larger blocks still get their own map
    constexpr int kTrimThreshold = 1 << 30;  // give memory back only past 1 GiB of free top
    applied = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 &&
              mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
#endif
  });
  return applied;
}

}  // namespace switchyard::runtime
