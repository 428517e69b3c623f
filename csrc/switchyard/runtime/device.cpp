#include "switchyard/runtime/device.h"

#include "switchyard/runtime/runtime.h"

#ifdef SWITCHYARD_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace switchyard::runtime {

c10::Device select_device() {
  const ProcessInfo& info = process_info();
#ifdef SWITCHYARD_WITH_CUDA
  const auto count = static_cast<int>(c10::cuda::device_count());
  if (count > 0) {
    // With several ranks per host each takes the GPU of its local rank; more ranks than
    // GPUs share them round-robin (useful for tests, never for speed).
    const auto index = static_cast<c10::DeviceIndex>(info.local_rank % count);
    c10::cuda::set_device(index);
    return c10::Device(c10::kCUDA, index);
  }
#endif
  (void)info;
  return c10::Device(c10::kCPU);
}

}  // namespace switchyard::runtime
