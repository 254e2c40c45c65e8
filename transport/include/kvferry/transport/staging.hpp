// Staging through pinned host memory, for plugins whose ptrSupport lacks
// NCCL_PTR_CUDA (many TCP plugins): the channel wrapper (channel.hpp) moves
// such bytes through a bounded ring of pinned bounce slots and copies them
// between the caller's device memory and a slot itself. The copy backend is
// this small interface so that the staging state machine runs in CI without
// a GPU (host_staging_copier) and for real with CUDA (cuda_staging_copier).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

namespace kvferry::transport {

// Copies bytes between the caller's memory and the channel's bounce slots,
// asynchronously, at most one copy in flight per slot. Used from the
// channel's thread only. Failures throw (gpu_error or transport_error) with a
// message naming the call; the channel adds the peer and the comm.
class staging_copier {
public:
  virtual ~staging_copier() = default;

  // Called once, before anything else: `slots` copy slots will be used,
  // numbered 0..slots-1; `device_memory` is the first staged region (the
  // CUDA copier makes its stream and events on that region's GPU).
  virtual void open(int slots, const void* device_memory) = 0;
  // The bounce memory (pinned for CUDA), allocated once per channel.
  virtual void* allocate_host(size_t bytes) = 0;
  virtual void free_host(void* memory) noexcept = 0;

  // Starts copying `bytes` from `source` to `destination` for `slot`.
  virtual void start(int slot, void* destination, const void* source,
                     size_t bytes) = 0;
  // True once the last copy started for `slot` has completed. Never blocks.
  virtual bool done(int slot) = 0;
  // Waits for every copy started (teardown: before the bounce memory is freed).
  virtual void wait_all() noexcept = 0;
};

using staging_copier_factory = std::function<std::unique_ptr<staging_copier>()>;

// Plain memcpy, synchronous (done() is true at once); malloc'ed bounce
// memory. For tests of the staging state machine and for host-only builds.
std::unique_ptr<staging_copier> make_host_staging_copier();

// cudaMemcpyAsync on a non-blocking stream of the region's GPU, one event per
// slot; cudaHostAlloc'ed (portable) bounce memory. Throws gpu_error in a
// build without CUDA.
std::unique_ptr<staging_copier> make_cuda_staging_copier();

} // namespace kvferry::transport
