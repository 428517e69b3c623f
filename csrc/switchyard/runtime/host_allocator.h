// Host memory: keep large buffers in the heap instead of mapping fresh pages every step.
//
// Note [Page faults of large activations]
// glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
// mmap and returns it with munmap on free. LibTorch's CPU allocator does not cache, so each
// training step maps, page-faults and unmaps its large activations again: on the 2-core
// build machines that costs about 0.5 ms per MiB, as much as the matrix products' whole
// overhead budget in an MoE layer. Raising the mmap and trim thresholds keeps freed
// buffers in the heap for the next step. The process keeps the peak it reached (as a
// caching allocator would); SWITCHYARD_HOST_ALLOCATOR=system leaves glibc's defaults.
#pragma once

namespace switchyard::runtime {

// Applies the thresholds once per process (glibc only). Returns whether they are in
// effect. runtime::init() calls it; benchmarks call it so that every variant they compare
// runs with the same allocator settings.
bool tune_host_allocator();

}  // namespace switchyard::runtime
