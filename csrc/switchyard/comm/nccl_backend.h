// The NCCL backend's factory (implementation in nccl_backend_cuda.cpp, compiled only with
// CUDA). Internal to csrc/switchyard/comm; kept free of nccl.h and CUDA headers so that the
// Communicator compiles the same way with and without CUDA.
#pragma once

#include <c10/core/Device.h>

#include <memory>

#include "switchyard/comm/backend.h"
#include "switchyard/comm/group_info.h"

namespace switchyard::comm::detail {

#ifdef SWITCHYARD_WITH_CUDA
// Creates the group's NCCL communicator on `device` (collective over the group: rank 0
// makes the unique id, MPI_Bcast hands it to the others, ncclCommInitRank joins them) and
// a dedicated high-priority communication stream.
std::unique_ptr<Backend> make_nccl_backend(GroupPtr group, c10::Device device);
#endif

}  // namespace switchyard::comm::detail
