// CPU reference of the UNPACK receive path: what the GPU unpack kernel does.
//
// After `test` reports an UNPACK receive done, its slot (seq % 16) of the meta
// ring lists `count` fragments {src_off, len, dst_off}: copy each from the
// bounce buffer to the destination, then call irecvConsumed(). With CUDA the
// meta ring and bounce buffer are mapped pinned host memory whose device
// addresses equal their host addresses (unified addressing), so this helper
// works on the handle's pointers on either build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvferry/transport/net_v7.h"

namespace kvsock {

// Returns the bytes copied into `destination`.
inline size_t kvsock_unpack_on_host(const ncclNetUnpackHandle& handle, int slot,
                                    void* destination) {
  const ncclNetUnpackMeta* meta = handle.meta;
  size_t copied = 0;
  uint64_t count = meta->count[slot];
  for (uint64_t i = 0; i < count && i < NCCL_NET_UNPACK_RECORDS; ++i) {
    const ncclNetUnpackRecord& record = meta->records[slot][i];
    std::memcpy(static_cast<char*>(destination) + record.dst_off,
                handle.bounce_buf + record.src_off, record.len);
    copied += record.len;
  }
  return copied;
}

} // namespace kvsock
