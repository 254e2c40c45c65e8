// UNPACK receive path, CPU side: turning one ring slot of an UNPACK plugin
// (ncclNetUnpackMeta, see net_v7.h and shared/docs/nccl-net-v7.md) into
// copies from the bounce buffer into the receive's destination, which may be
// one contiguous buffer or scattered KV blocks.
//
// The GPU kernel (gpu_copy.hpp: unpack_engine) does the same mapping on the
// device; this host version is the reference the tests compare it with, and
// the bounds checks name the record at fault.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/transport/copy_plan.hpp"
#include "kvferry/transport/net_v7.h"

namespace kvferry::transport {

/// Where the bytes of one irecv go. A receive's dst_off (0..size) maps onto
/// the destination region as follows:
///  - contiguous: region offset = base_offset + dst_off;
///  - blocks:     dst_off / block_bytes selects block_offsets[i] (a region
///                offset), plus dst_off % block_bytes within that block.
/// A record that straddles a block boundary is split at it.
struct unpack_destination {
  std::uint64_t base_offset = 0;            // contiguous form
  std::uint64_t block_bytes = 0;            // 0 = contiguous
  std::vector<std::uint64_t> block_offsets; // blocks form

  static unpack_destination contiguous(std::uint64_t base_offset = 0) {
    return unpack_destination{base_offset, 0, {}};
  }
  static unpack_destination blocks(std::uint64_t block_bytes,
                                   std::vector<std::uint64_t> offsets) {
    return unpack_destination{0, block_bytes, std::move(offsets)};
  }
  /// Bytes of receive this destination can take (UINT64_MAX when contiguous).
  std::uint64_t capacity() const;
};

/// The ring slot a receive with sequence number `seq` uses.
constexpr int unpack_slot_of(std::uint64_t seq) {
  return static_cast<int>(seq % NCCL_NET_UNPACK_SLOTS);
}

/// Checks a slot's records before anything is copied: the count is at most
/// NCCL_NET_UNPACK_RECORDS, every fragment lies inside the bounce buffer and
/// inside the destination's capacity (and, for block destinations, inside the
/// destination region). Returns the first problem, naming slot and record.
std::optional<std::string> check_unpack_slot(const ncclNetUnpackRecord* records,
                                             std::uint64_t count, int slot,
                                             std::uint64_t bounce_bytes,
                                             const unpack_destination& dst,
                                             std::uint64_t dst_region_bytes);

/// The copies (bounce offset → destination region offset) that unpack a
/// checked slot; records crossing a block boundary become two extents.
std::vector<copy_extent>
unpack_records_to_extents(const ncclNetUnpackRecord* records,
                          std::uint64_t count, const unpack_destination& dst);

/// Reference unpack on host memory (tests; also usable for a host bounce).
void unpack_on_host(const ncclNetUnpackRecord* records, std::uint64_t count,
                    const unsigned char* bounce, unsigned char* dst_region,
                    const unpack_destination& dst);

} // namespace kvferry::transport
