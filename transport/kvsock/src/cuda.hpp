// The little of CUDA that kvsock needs, behind functions that compile (and
// report "no CUDA") without KVFERRY_HAVE_CUDA.
#pragma once

#include <cstddef>

namespace kvsock::cuda {

// True when built with CUDA and a device is present; decided once, in init().
bool probe();
bool available();

// Device that owns `ptr`, or -1 when it is not device memory (or no CUDA).
int device_of(const void* ptr);

// Pinned host memory. `mapped` also maps it into the device address space;
// device_pointer() then gives the address a kernel uses. Without CUDA these
// fall back to plain (page-aligned) host memory.
void* alloc_pinned(size_t bytes, bool mapped);
void free_pinned(void* ptr);
void* device_pointer(void* host_ptr);

// Synchronous copies on a private stream of the calling thread's device;
// return false (and log) on a CUDA error.
bool copy_to_host(void* dst, const void* src_device, size_t bytes, int device);
bool copy_to_device(void* dst_device, const void* src, size_t bytes,
                    int device);

} // namespace kvsock::cuda
