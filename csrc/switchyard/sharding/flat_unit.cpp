#include "switchyard/sharding/flat_unit.h"

#include <ATen/ATen.h>
#include <c10/core/StorageImpl.h>
#include <torch/utils.h>

#include <algorithm>

namespace switchyard::sharding {
namespace {

// [lo, hi) of `a` intersected with [b0, b1); empty when lo >= hi.
std::pair<int64_t, int64_t> intersect(int64_t a0, int64_t a1, int64_t b0, int64_t b1) {
  return {std::max(a0, b0), std::min(a1, b1)};
}

}  // namespace

FlatUnit::FlatUnit(std::string name, int64_t owner, std::vector<FlatParam> params,
                   comm::Communicator group, bool sharded, FlatUnitDtypes dtypes,
                   CountingAllocator* allocator)
    : name_(std::move(name)),
      owner_(owner),
      params_(std::move(params)),
      group_(std::move(group)),
      sharded_(sharded && group_.size() > 1),
      dtypes_(dtypes),
      allocator_(allocator) {
  TORCH_CHECK(!params_.empty(), "FlatUnit '", name_, "': expected at least one parameter");
  device_ = params_.front().param.device();
  for (FlatParam& p : params_) {
    TORCH_CHECK(p.param.device() == device_, "FlatUnit '", name_, "': parameter ", p.name, " is on ",
                p.param.device(), " but ", params_.front().name, " is on ", device_,
                "; move the whole model to one device first");
    TORCH_CHECK(at::isFloatingType(p.param.scalar_type()), "FlatUnit '", name_, "': parameter ",
                p.name, " has dtype ", p.param.scalar_type(), "; only floating parameters are trained");
    p.sizes = p.param.sizes().vec();
    p.numel = p.param.numel();
    p.offset = numel_;
    p.decay = p.param.dim() >= 2;
    numel_ += p.numel;
  }
  const int64_t R = sharded_ ? group_.size() : 1;
  padded_ = (numel_ + R - 1) / R * R;
  shard_numel_ = padded_ / R;
  shard_offset_ = sharded_ ? group_.rank() * shard_numel_ : 0;
  const int64_t s0 = shard_offset_, s1 = shard_offset_ + shard_numel_;

  const torch::NoGradGuard no_grad;
  // 1. The full buffer in the compute dtype, filled with the current (identical) weights.
  full_ = new_buffer(padded_, dtypes_.compute);
  full_.narrow(0, numel_, padded_ - numel_).zero_();
  for (const FlatParam& p : params_) full_.narrow(0, p.offset, p.numel).copy_(p.param.reshape(-1));
  // 2. This rank's shard of master weights, from the original values (not rounded through
  //    the compute dtype), and the zeroed gradient and AdamW state.
  master_is_full_ = !sharded_ && dtypes_.master == dtypes_.compute;
  if (master_is_full_) {
    master_shard_ = full_;
  } else {
    master_shard_ = new_buffer(shard_numel_, dtypes_.master).zero_();
    for (const FlatParam& p : params_) {
      const auto [lo, hi] = intersect(p.offset, p.offset + p.numel, s0, s1);
      if (lo >= hi) continue;
      master_shard_.narrow(0, lo - s0, hi - lo).copy_(p.param.reshape(-1).narrow(0, lo - p.offset, hi - lo));
    }
  }
  grad_shard_ = new_buffer(shard_numel_, dtypes_.master).zero_();
  exp_avg_ = new_buffer(shard_numel_, dtypes_.master).zero_();
  exp_avg_sq_ = new_buffer(shard_numel_, dtypes_.master).zero_();
  for (const FlatParam& p : params_) {
    if (!p.decay) continue;
    const auto [lo, hi] = intersect(p.offset, p.offset + p.numel, s0, s1);
    if (lo < hi) decay_ranges_.emplace_back(lo - s0, hi - lo);
  }
  // 3. The parameters become views into the buffer (Note [Freeing gathered parameters]).
  bind_views();
  gathered_ = true;
  release();
  unbind_views();
}

void FlatUnit::bind_views() {
  if (views_bound_) return;
  for (FlatParam& p : params_) p.param.set_data(full_.narrow(0, p.offset, p.numel).view(p.sizes));
  views_bound_ = true;
}

void FlatUnit::unbind_views() {
  if (!sharded_ || !views_bound_) return;
  const at::Tensor empty = at::empty({0}, full_.options());
  for (FlatParam& p : params_) p.param.set_data(empty);
  views_bound_ = false;
}

at::Tensor FlatUnit::new_buffer(int64_t numel, at::ScalarType dtype) const {
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(dtype));
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, allocator_, /*resizable=*/true);
  return at::empty({0}, at::TensorOptions().dtype(dtype).device(device_))
      .set_(storage, 0, {numel}, {1});
}

void FlatUnit::allocate_full_storage() {
  c10::StorageImpl* s = full_.storage().unsafeGetStorageImpl();
  const size_t nbytes = static_cast<size_t>(padded_) * c10::elementSize(dtypes_.compute);
  TORCH_INTERNAL_ASSERT(s->nbytes() == 0, "FlatUnit '", name_, "': gathering a unit that holds memory");
  s->set_data_ptr_noswap(allocator_->allocate(nbytes));
  s->set_nbytes(nbytes);
}

int64_t FlatUnit::start_gather() {
  if (gathered_ || pending_gather_) return 0;
  allocate_full_storage();
  if (dtypes_.master == dtypes_.compute) {
    gather_input_ = master_shard_;
  } else {
    const torch::NoGradGuard no_grad;
    gather_input_ = new_buffer(shard_numel_, dtypes_.compute).copy_(master_shard_);
  }
  // The backend writes `full_` through its data pointer: no version counter moves.
  pending_gather_ = group_.all_gather_async(gather_input_, full_);
  return (group_.size() - 1) * shard_numel_ * static_cast<int64_t>(c10::elementSize(dtypes_.compute));
}

void FlatUnit::wait_gather() {
  if (gathered_) return;
  if (!pending_gather_) start_gather();
  pending_gather_->wait();
  pending_gather_.reset();
  gather_input_ = at::Tensor();
  gathered_ = true;
  bind_views();  // views need the bytes to exist when they are made (bounds check)
}

void FlatUnit::release() {
  if (!sharded_ || !gathered_) return;
  TORCH_INTERNAL_ASSERT(!pending_gather_, "FlatUnit '", name_, "': release during a gather");
  c10::StorageImpl* s = full_.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(c10::DataPtr(nullptr, device_));
  s->set_nbytes(0);
  gathered_ = false;
}

int64_t FlatUnit::gathered_bytes() const {
  return static_cast<int64_t>(full_.storage().nbytes());
}

void FlatUnit::add_grad(size_t i, const at::Tensor& grad) {
  TORCH_INTERNAL_ASSERT(i < params_.size());
  const FlatParam& p = params_[i];
  TORCH_CHECK(grad.numel() == p.numel, "FlatUnit '", name_, "': gradient of ", p.name,
              " has ", grad.numel(), " elements, expected ", p.numel);
  const torch::NoGradGuard no_grad;
  if (!full_grad_.defined()) full_grad_ = new_buffer(padded_, dtypes_.reduce).zero_();
  full_grad_.narrow(0, p.offset, p.numel).add_(grad.reshape(-1));
}

int64_t FlatUnit::start_reduce() {
  TORCH_INTERNAL_ASSERT(!pending_reduce_, "FlatUnit '", name_, "': reduce already running");
  if (!full_grad_.defined()) full_grad_ = new_buffer(padded_, dtypes_.reduce).zero_();
  const int64_t R = group_.size();
  const int64_t elem = static_cast<int64_t>(c10::elementSize(dtypes_.reduce));
  if (sharded_) {
    reduce_out_ = new_buffer(shard_numel_, dtypes_.reduce);
    pending_reduce_ = group_.reduce_scatter_async(full_grad_, comm::ReduceOp::kSum, reduce_out_);
    return (R - 1) * shard_numel_ * elem;
  }
  reduce_out_ = full_grad_;
  if (R == 1) return 0;
  pending_reduce_ = group_.all_reduce_async(full_grad_, comm::ReduceOp::kSum);
  return 2 * (R - 1) * padded_ * elem / R;
}

void FlatUnit::finish_reduce() {
  if (!reduce_out_.defined()) return;
  if (pending_reduce_) pending_reduce_->wait();
  const torch::NoGradGuard no_grad;
  grad_shard_.add_(reduce_out_);
  pending_reduce_.reset();
  reduce_out_ = at::Tensor();
  full_grad_ = at::Tensor();
}

int64_t FlatUnit::full_grad_bytes() const {
  return full_grad_.defined() ? static_cast<int64_t>(full_grad_.storage().nbytes()) : 0;
}

void FlatUnit::publish_master() {
  if (sharded_ || master_is_full_) return;
  const torch::NoGradGuard no_grad;
  full_.copy_(master_shard_);
}

int64_t FlatUnit::shard_state_bytes() const {
  const int64_t m = shard_numel_ * static_cast<int64_t>(c10::elementSize(dtypes_.master));
  return (master_is_full_ ? 0 : m) + 3 * m;
}

}  // namespace switchyard::sharding
