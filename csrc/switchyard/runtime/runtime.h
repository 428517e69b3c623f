// Process-level runtime: MPI start-up and shut-down, this process's place in the job, and
// the single fatal-error path.
//
// Note [One way to die]
// A distributed job must never leave ranks waiting on a peer that has died. Every
// unrecoverable error therefore goes through fatal(): it prints the cause with the rank
// and host, then calls MPI_Abort on MPI_COMM_WORLD, which makes mpirun kill every rank.
// Code that can fail throws switchyard::Error (or c10::Error); the outermost layer (the
// training loop, the Python excepthook installed by switchyard.init()) turns an uncaught
// error into fatal().
#pragma once

#include <string>

namespace switchyard::runtime {

struct ProcessInfo {
  int rank = 0;          // in MPI_COMM_WORLD
  int world_size = 1;
  int local_rank = 0;    // among the ranks on this host (MPI_COMM_TYPE_SHARED)
  int local_size = 1;
  std::string hostname;
  bool launched_by_mpirun = false;  // false: a plain single process (MPI singleton)
};

// Initialises MPI once (MPI_THREAD_FUNNELED; works under mpirun and as a plain process)
// and returns this process's place in the job. Later calls return the same record.
const ProcessInfo& init();

// True once init() has run and finalize() has not.
bool is_initialized();

// The record from init(); throws switchyard::Error when init() has not run.
const ProcessInfo& process_info();

// Finalises MPI if this module initialised it. Idempotent. Every rank must call it (or
// let the exit hook do it) before exiting, or mpirun reports an improper exit.
void finalize();

// Prints "[switchyard] rank R/W (host): fatal: <message>" to stderr and aborts the whole
// job with MPI_Abort. Never returns.
[[noreturn]] void fatal(const std::string& message);

// A short "rank 3/4 (host)" tag for log and error messages.
std::string rank_tag();

}  // namespace switchyard::runtime
