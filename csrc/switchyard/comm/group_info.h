// GroupInfo: who a group is (name, this rank, members, its MPI communicator), shared by the
// Communicator, its backends and every Work handle it returns, so that a handle can
// outlive the Communicator that made it. Also the one path for backend failures.
// Internal to csrc/switchyard/comm.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace switchyard::comm::detail {

struct GroupInfo {
  std::string name;
  int rank = 0;
  int size = 1;
  std::vector<int> world_ranks;  // MPI_COMM_WORLD rank of each member
  MPI_Comm comm = MPI_COMM_NULL;  // owned: freed with the GroupInfo (while MPI is up)

  GroupInfo() = default;
  GroupInfo(const GroupInfo&) = delete;
  GroupInfo& operator=(const GroupInfo&) = delete;
  ~GroupInfo();

  // "group 'expert_parallel' (rank 1 of 2, world ranks [2, 3])"
  std::string describe() const;
};

using GroupPtr = std::shared_ptr<const GroupInfo>;

// Takes ownership of `comm` (a fresh dup/split): sets MPI_ERRORS_RETURN on it, reads rank,
// size and the members' world ranks. Failures throw switchyard::Error.
GroupPtr make_group(MPI_Comm comm, std::string name);

// Note [Collective failures are fatal]
// "<op> on group '<name>' (rank r of n, world ranks [...]) failed in <call>: <backend
// message>", then runtime::fatal (which adds the world rank and host, and MPI_Aborts the
// job). Never returns.
[[noreturn]] void collective_failed(const GroupInfo& group, std::string_view op,
                                    std::string_view call, const std::string& message);

// The library's text for an MPI error code.
std::string mpi_error_string(int code);

// collective_failed() unless rc is MPI_SUCCESS.
inline void check_mpi(int rc, const GroupInfo& group, std::string_view op, std::string_view call) {
  if (rc != MPI_SUCCESS) collective_failed(group, op, call, mpi_error_string(rc));
}

}  // namespace switchyard::comm::detail
