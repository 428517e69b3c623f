// Lets one per-row / per-element routine serve both the CPU loop and the CUDA grid, so the
// CPU tests exercise exactly the arithmetic the GPU runs (see docs/architecture.md).
#pragma once

#if defined(__CUDACC__)
#define SWITCHYARD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SWITCHYARD_HOST_DEVICE inline
#endif
