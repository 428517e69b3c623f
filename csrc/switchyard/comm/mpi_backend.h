// The MPI backend: collectives on CPU tensors over the group's MPI communicator, blocking
// (MPI_Alltoallv, ...) or non-blocking (MPI_Ialltoallv, ...). Internal to
// csrc/switchyard/comm; docs/communication.md describes the behaviour.
#pragma once

#include <cstdint>
#include <memory>

#include "switchyard/comm/backend.h"
#include "switchyard/comm/group_info.h"

namespace switchyard::comm::detail {

std::unique_ptr<Backend> make_mpi_backend(GroupPtr group);

// MPI_Barrier / MPI_Ibarrier on the group: the barrier of every backend (it synchronises
// hosts, not devices).
WorkHandle mpi_barrier(const GroupPtr& group, bool async);

// Note [MPI counts are int]
// MPI takes counts and displacements as int. Transfers that only move bytes (all_to_all_v,
// all_gather) count in rows of a contiguous row datatype, so they fit up to INT_MAX rows
// of any width; reductions and broadcasts are split into several calls of at most
// max_mpi_count() elements; reduce_scatter cannot be split that way (each rank's block
// would become strided) and rejects blocks above the limit with a message.
int64_t max_mpi_count();
// Tests only: lowers the limit so that the splitting and rejection paths run on small
// tensors. Returns the previous value; <= 0 restores INT_MAX.
int64_t set_max_mpi_count_for_testing(int64_t limit);

}  // namespace switchyard::comm::detail
