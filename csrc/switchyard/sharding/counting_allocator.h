// CountingAllocator: a c10::Allocator that forwards to the device's allocator and counts
// the bytes it has handed out and not yet got back (current and peak). The engine allocates
// every buffer it owns for dense parameters -- gathered units, gradient buffers, shards,
// optimizer state -- through one of these, so its byte accounting can be checked against
// what was really allocated and freed (tests/cpp/sharding, the memory test).
//
// Storages keep a raw pointer to their allocator for later resizing, and the engine's
// parameter views can outlive the engine; so a CountingAllocator is never destroyed
// (create() leaks it on purpose: one small object per engine) while its counters live in a
// shared block that every allocation's deleter also holds.
#pragma once

#include <c10/core/Allocator.h>
#include <c10/core/Device.h>

#include <atomic>
#include <cstdint>
#include <memory>

namespace switchyard::sharding {

struct ByteCounter {
  std::atomic<int64_t> current{0};
  std::atomic<int64_t> peak{0};
  std::atomic<int64_t> allocations{0};
  void reset_peak() { peak.store(current.load()); }
};

class CountingAllocator final : public c10::Allocator {
 public:
  // An allocator over c10::GetAllocator(device_type), never freed (see above).
  static CountingAllocator* create(c10::DeviceType device_type);

  c10::DataPtr allocate(size_t nbytes) override;
  void copy_data(void* dest, const void* src, std::size_t count) const override;

  const ByteCounter& counter() const { return *counter_; }
  ByteCounter& counter() { return *counter_; }

 private:
  explicit CountingAllocator(c10::Allocator* base);
  c10::Allocator* base_;
  std::shared_ptr<ByteCounter> counter_;
};

}  // namespace switchyard::sharding
