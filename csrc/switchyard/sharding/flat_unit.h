// FlatUnit: the dense parameters of one unit of a nn::UnitSequence, flattened into one
// buffer and split into equal shards over the data-parallel group (ZeRO-3 / FSDP "flat
// parameter"). It owns the unit's gathered buffer, its gradient buffer during backward and
// its shard of master weights, gradients and AdamW state.
//
//   flat layout   [p0 | p1 | ... | pk | pad]   padded = ceil(numel / R) * R elements
//   rank r shard  [r * n, (r+1) * n)           n = padded / R
//
// Note [Freeing gathered parameters]
// A unit's autograd graph keeps its parameters alive: the ops save them (or views of them)
// for backward, so simply dropping our reference would free nothing. Instead the model's
// parameters are made views (Tensor::set_data) into one persistent buffer `full_`, created
// on our CountingAllocator, and release() shrinks that buffer's *storage* to 0 bytes: the
// StorageImpl the parameters and every saved view share loses its memory, while the tensor
// objects -- and so the graph -- stay valid. Before the unit's backward, gather() puts a new
// allocation into the same StorageImpl and the all-gather writes the values into it through
// a raw pointer (the MPI / NCCL backend), so no tensor's version counter moves and autograd's
// saved-variable check still passes. The parameters' own version counters are separate from
// full_'s (set_data keeps the parameter's counter), so writes through full_ never invalidate
// saved parameters either. This is the approach of PyTorch's FSDP1 (storage resize to 0).
// Limits: an op that saves a *copy* of a parameter (e.g. a dtype conversion inside the
// model) keeps that copy alive until backward -- correct, but outside our accounting.
// Between steps the parameters of sharded units are empty tensors (bind_views()), so
// reading the model there sees no values instead of a storage without bytes.
// The alternative -- recomputing each unit in backward (checkpointing) -- needs no storage
// tricks but costs a second forward per unit; docs/sharding.md compares the two.
//
// Without sharding (one rank, or parallel.shard_dense = false) the same class keeps the
// whole buffer gathered for good, its "shard" is the whole buffer and gradients are
// all-reduced: one code path for both.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "switchyard/comm/communicator.h"
#include "switchyard/sharding/counting_allocator.h"

namespace switchyard::sharding {

struct FlatParam {
  std::string name;  // as in the model's named_parameters()
  at::Tensor param;  // the model's parameter (a view into the unit's buffer once bound)
  std::vector<int64_t> sizes;
  int64_t offset = 0;  // in elements, within the unit's flat buffer
  int64_t numel = 0;
  bool decay = true;   // weight decay applies (parameters of 2 or more dimensions)
};

struct FlatUnitDtypes {
  at::ScalarType compute, master, reduce;
};

class FlatUnit {
 public:
  // params: the unit's dense parameters (their current values are the initial weights and
  // must be equal on every rank). group: the data-parallel group the unit is sharded over
  // (sharded = false keeps it replicated). Binds the parameters: they become views into the
  // unit's buffer (dtype `compute`); a sharded unit starts released.
  FlatUnit(std::string name, int64_t owner, std::vector<FlatParam> params, comm::Communicator group,
           bool sharded, FlatUnitDtypes dtypes, CountingAllocator* allocator);

  const std::string& name() const { return name_; }
  int64_t owner() const { return owner_; }
  const std::vector<FlatParam>& params() const { return params_; }
  bool sharded() const { return sharded_; }
  int64_t numel() const { return numel_; }            // unpadded
  int64_t padded_numel() const { return padded_; }
  int64_t shard_numel() const { return shard_numel_; }
  int64_t shard_offset() const { return shard_offset_; }  // of this rank's shard, in the flat buffer

  // --- parameters ------------------------------------------------------------------------
  bool gathered() const { return gathered_; }
  bool gather_pending() const { return pending_gather_ != nullptr; }
  // Allocates the buffer's storage and starts the all-gather of the shards (compute dtype).
  // Returns the bytes this rank receives. No-op (0) when gathered or pending.
  int64_t start_gather();
  void wait_gather();  // completes a pending gather (starting one if none)
  void release();      // storage -> 0 bytes (sharded units only; see the Note)
  // Outside a step a sharded unit's parameters are empty ([0]-shaped) tensors, so code
  // that reads the model between steps sees nothing rather than a storage without bytes;
  // wait_gather() makes them views into the buffer again (bind_views, metadata only);
  // unbind_views() empties them: only while no autograd graph holds them (between
  // micro-batches).
  void bind_views();
  void unbind_views();
  int64_t gathered_bytes() const;  // bytes the full buffer holds now

  // --- gradients -------------------------------------------------------------------------
  // Adds d(objective)/d(params_[i]) (any floating dtype) into the unit's full-size
  // gradient buffer (reduce dtype), allocating it zeroed on first use.
  void add_grad(size_t i, const at::Tensor& grad);
  bool has_full_grad() const { return full_grad_.defined(); }
  // Starts the reduce-scatter (sharded) or all-reduce (replicated) of the gradient buffer
  // (an all-zero buffer when no gradient arrived). Returns the bytes this rank sends.
  int64_t start_reduce();
  // Completes it: grad_shard += the reduced block; frees the gradient buffer.
  void finish_reduce();
  bool reduce_pending() const { return pending_reduce_ != nullptr; }
  int64_t full_grad_bytes() const;

  // --- shard state (master dtype) ----------------------------------------------------------
  at::Tensor& master_shard() { return master_shard_; }
  at::Tensor& grad_shard() { return grad_shard_; }
  at::Tensor& exp_avg() { return exp_avg_; }
  at::Tensor& exp_avg_sq() { return exp_avg_sq_; }
  // [offset, length) ranges of the shard (relative to it) that take weight decay.
  const std::vector<std::pair<int64_t, int64_t>>& decay_ranges() const { return decay_ranges_; }
  // After the optimizer wrote master_shard: a replicated unit copies it into the parameters
  // (a sharded one reads it at the next gather).
  void publish_master();
  // Persistent bytes of the shard: master (when separate from the parameters), gradient,
  // exp_avg, exp_avg_sq.
  int64_t shard_state_bytes() const;

 private:
  at::Tensor new_buffer(int64_t numel, at::ScalarType dtype) const;
  void allocate_full_storage();

  std::string name_;
  int64_t owner_;
  std::vector<FlatParam> params_;
  comm::Communicator group_;
  bool sharded_;
  FlatUnitDtypes dtypes_;
  CountingAllocator* allocator_;
  c10::Device device_{c10::kCPU};
  int64_t numel_ = 0, padded_ = 0, shard_numel_ = 0, shard_offset_ = 0;

  at::Tensor full_;  // [padded] compute dtype; storage 0 bytes while released
  bool gathered_ = false;
  comm::WorkHandle pending_gather_;
  at::Tensor gather_input_;  // the compute-dtype copy of the shard while a gather runs

  at::Tensor full_grad_;     // [padded] reduce dtype, during backward only
  at::Tensor reduce_out_;    // [shard] reduce dtype
  comm::WorkHandle pending_reduce_;

  at::Tensor master_shard_, grad_shard_, exp_avg_, exp_avg_sq_;
  bool master_is_full_ = false;
  bool views_bound_ = false;  // replicated + same dtype: the master *is* the parameters' buffer
  std::vector<std::pair<int64_t, int64_t>> decay_ranges_;
};

}  // namespace switchyard::sharding
