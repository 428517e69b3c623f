// Device choice for this process: one rank per GPU, the GPU being the local rank's.
#pragma once

#include <c10/core/Device.h>

namespace switchyard::runtime {

// CUDA device (local_rank % device_count) when CUDA is built in and a GPU is visible,
// otherwise the CPU. Makes the chosen CUDA device current. Requires init().
c10::Device select_device();

}  // namespace switchyard::runtime
