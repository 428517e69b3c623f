#include "switchyard/comm/group_info.h"

#include <sstream>

#include "switchyard/common/error.h"
#include "switchyard/runtime/runtime.h"

namespace switchyard::comm::detail {
namespace {

bool mpi_is_up() {
  int up = 0, down = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  return up && !down;
}

void require(int rc, const char* call, const std::string& name) {
  SWITCHYARD_CHECK(rc == MPI_SUCCESS, "creating communication group '", name, "': ", call,
                   " failed: ", mpi_error_string(rc));
}

}  // namespace

GroupInfo::~GroupInfo() {
  // After MPI_Finalize (Python frees objects after the atexit hook) there is nothing to free.
  if (comm != MPI_COMM_NULL && mpi_is_up()) MPI_Comm_free(&comm);
}

std::string GroupInfo::describe() const {
  std::ostringstream os;
  os << "group '" << name << "' (rank " << rank << " of " << size << ", world ranks [";
  for (size_t i = 0; i < world_ranks.size(); ++i) os << (i ? ", " : "") << world_ranks[i];
  os << "])";
  return os.str();
}

GroupPtr make_group(MPI_Comm comm, std::string name) {
  auto g = std::make_shared<GroupInfo>();
  g->comm = comm;  // owned from here on, even if a check below throws
  g->name = std::move(name);
  // Errors come back as return codes so that the message can name the operation and the
  // group (Note [Collective failures are fatal]); a dup inherits this, but say it anyway.
  require(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", g->name);
  require(MPI_Comm_rank(comm, &g->rank), "MPI_Comm_rank", g->name);
  require(MPI_Comm_size(comm, &g->size), "MPI_Comm_size", g->name);
  MPI_Group mine = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  require(MPI_Comm_group(comm, &mine), "MPI_Comm_group", g->name);
  require(MPI_Comm_group(MPI_COMM_WORLD, &world), "MPI_Comm_group(MPI_COMM_WORLD)", g->name);
  std::vector<int> local(g->size);
  for (int i = 0; i < g->size; ++i) local[i] = i;
  g->world_ranks.resize(g->size);
  const int rc = MPI_Group_translate_ranks(mine, g->size, local.data(), world, g->world_ranks.data());
  MPI_Group_free(&mine);
  MPI_Group_free(&world);
  require(rc, "MPI_Group_translate_ranks", g->name);
  return g;
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(text, len) + " (MPI error code " + std::to_string(code) + ")";
}

void collective_failed(const GroupInfo& group, std::string_view op, std::string_view call,
                       const std::string& message) {
  runtime::fatal(std::string(op) + " on " + group.describe() + " failed in " + std::string(call) + ": " +
                 message);
}

}  // namespace switchyard::comm::detail
