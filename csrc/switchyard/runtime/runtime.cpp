#include "switchyard/runtime/runtime.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "switchyard/common/error.h"
#include "switchyard/runtime/host_allocator.h"

namespace switchyard::runtime {
namespace {

std::mutex g_mutex;
ProcessInfo g_info;
bool g_initialized = false;
bool g_we_initialized_mpi = false;

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  SWITCHYARD_FAIL(what, " failed: ", std::string(text, len));
}

}  // namespace

const ProcessInfo& init() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_initialized) return g_info;
  tune_host_allocator();  // Note [Page faults of large activations]

  int already = 0;
  check_mpi(MPI_Initialized(&already), "MPI_Initialized");
  if (!already) {
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    g_we_initialized_mpi = true;
  }
  // Errors in collectives come back as return codes we check, not as silent aborts deep in
  // the library, so that our messages can name the operation and the rank.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);

  ProcessInfo info;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &info.rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &info.world_size), "MPI_Comm_size");
  MPI_Comm local;
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, info.rank, MPI_INFO_NULL, &local),
            "MPI_Comm_split_type");
  check_mpi(MPI_Comm_rank(local, &info.local_rank), "MPI_Comm_rank(local)");
  check_mpi(MPI_Comm_size(local, &info.local_size), "MPI_Comm_size(local)");
  MPI_Comm_free(&local);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  info.hostname = host;
  info.launched_by_mpirun = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr ||
                            std::getenv("PMIX_RANK") != nullptr;
  g_info = info;
  g_initialized = true;
  return g_info;
}

bool is_initialized() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_initialized;
}

const ProcessInfo& process_info() {
  std::lock_guard<std::mutex> lock(g_mutex);
  SWITCHYARD_CHECK(g_initialized, "switchyard runtime is not initialised: call switchyard::runtime::init() "
                                  "(Python: switchyard.init()) first");
  return g_info;
}

void finalize() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_initialized) return;
  g_initialized = false;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_we_initialized_mpi && !finalized) MPI_Finalize();
}

std::string rank_tag() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_initialized) return "rank ?/? (runtime not initialised)";
  return "rank " + std::to_string(g_info.rank) + "/" + std::to_string(g_info.world_size) + " (" +
         g_info.hostname + ")";
}

void fatal(const std::string& message) {
  std::fprintf(stderr, "[switchyard] %s: fatal: %s\n", rank_tag().c_str(), message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  int mpi_up = 0, mpi_down = 0;
  MPI_Initialized(&mpi_up);
  MPI_Finalized(&mpi_down);
  if (mpi_up && !mpi_down) MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

}  // namespace switchyard::runtime
