#include "switchyard/sharding/counting_allocator.h"

#include <c10/util/Exception.h>

#include <algorithm>

namespace switchyard::sharding {
namespace {

// What a counted allocation's deleter needs: the base allocation and where to subtract.
struct Counted {
  c10::DataPtr inner;
  std::shared_ptr<ByteCounter> counter;
  int64_t nbytes;
};

void delete_counted(void* ctx) {
  auto* c = static_cast<Counted*>(ctx);
  c->counter->current.fetch_sub(c->nbytes);
  delete c;  // frees the base allocation through its own deleter
}

}  // namespace

CountingAllocator* CountingAllocator::create(c10::DeviceType device_type) {
  c10::Allocator* base = c10::GetAllocator(device_type);
  TORCH_CHECK(base != nullptr, "CountingAllocator: no allocator registered for device type ",
              device_type);
  return new CountingAllocator(base);  // never deleted: see the header
}

CountingAllocator::CountingAllocator(c10::Allocator* base)
    : base_(base), counter_(std::make_shared<ByteCounter>()) {}

c10::DataPtr CountingAllocator::allocate(size_t nbytes) {
  c10::DataPtr inner = base_->allocate(nbytes);
  void* data = inner.get();
  const c10::Device device = inner.device();
  auto* ctx = new Counted{std::move(inner), counter_, static_cast<int64_t>(nbytes)};
  const int64_t now = counter_->current.fetch_add(ctx->nbytes) + ctx->nbytes;
  counter_->allocations.fetch_add(1);
  int64_t peak = counter_->peak.load();
  while (now > peak && !counter_->peak.compare_exchange_weak(peak, now)) {
  }
  return c10::DataPtr(data, ctx, &delete_counted, device);
}

void CountingAllocator::copy_data(void* dest, const void* src, std::size_t count) const {
  base_->copy_data(dest, src, count);
}

}  // namespace switchyard::sharding
