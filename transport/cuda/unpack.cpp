#include "kvferry/transport/unpack.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

namespace kvferry::transport {

std::uint64_t unpack_destination::capacity() const {
  if (block_bytes == 0)
    return std::numeric_limits<std::uint64_t>::max() - base_offset;
  return block_bytes * block_offsets.size();
}

namespace {

std::string where(int slot, std::uint64_t index, const ncclNetUnpackRecord& r) {
  return "unpack slot " + std::to_string(slot) + " record #" +
         std::to_string(index) + " (src_off " + std::to_string(r.src_off) +
         ", len " + std::to_string(r.len) + ", dst_off " +
         std::to_string(r.dst_off) + ")";
}

// Calls emit(dst_region_offset, src_delta, bytes) for each piece of a record,
// split at destination block boundaries.
template<typename Emit>
void for_each_piece(const ncclNetUnpackRecord& r, const unpack_destination& dst,
                    Emit&& emit) {
  if (dst.block_bytes == 0) {
    if (r.len > 0)
      emit(dst.base_offset + r.dst_off, 0, std::uint64_t{r.len});
    return;
  }
  std::uint64_t done = 0;
  while (done < r.len) {
    const std::uint64_t logical = r.dst_off + done;
    const std::uint64_t block = logical / dst.block_bytes;
    const std::uint64_t within = logical % dst.block_bytes;
    const std::uint64_t piece =
        std::min<std::uint64_t>(r.len - done, dst.block_bytes - within);
    emit(dst.block_offsets[block] + within, done, piece);
    done += piece;
  }
}

} // namespace

std::optional<std::string> check_unpack_slot(const ncclNetUnpackRecord* records,
                                             std::uint64_t count, int slot,
                                             std::uint64_t bounce_bytes,
                                             const unpack_destination& dst,
                                             std::uint64_t dst_region_bytes) {
  if (count > NCCL_NET_UNPACK_RECORDS)
    return "unpack slot " + std::to_string(slot) + " claims " +
           std::to_string(count) + " records; a slot holds at most " +
           std::to_string(NCCL_NET_UNPACK_RECORDS);
  const std::uint64_t capacity = dst.capacity();
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto& r = records[i];
    if (std::uint64_t{r.src_off} + r.len > bounce_bytes)
      return where(slot, i, r) + " reads past the bounce buffer of " +
             std::to_string(bounce_bytes) + " bytes";
    if (r.dst_off > capacity || r.len > capacity - r.dst_off)
      return where(slot, i, r) + " writes past the receive's destination of " +
             std::to_string(capacity) + " bytes";
    std::optional<std::string> problem;
    for_each_piece(
        r, dst, [&](std::uint64_t off, std::uint64_t, std::uint64_t len) {
          if (!problem &&
              (off > dst_region_bytes || len > dst_region_bytes - off))
            problem = where(slot, i, r) + " maps to region offset " +
                      std::to_string(off) + " past the destination region of " +
                      std::to_string(dst_region_bytes) + " bytes";
        });
    if (problem)
      return problem;
  }
  return std::nullopt;
}

std::vector<copy_extent>
unpack_records_to_extents(const ncclNetUnpackRecord* records,
                          std::uint64_t count, const unpack_destination& dst) {
  std::vector<copy_extent> extents;
  extents.reserve(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto& r = records[i];
    for_each_piece(
        r, dst, [&](std::uint64_t off, std::uint64_t delta, std::uint64_t len) {
          extents.push_back(copy_extent{r.src_off + delta, off, len});
        });
  }
  return extents;
}

void unpack_on_host(const ncclNetUnpackRecord* records, std::uint64_t count,
                    const unsigned char* bounce, unsigned char* dst_region,
                    const unpack_destination& dst) {
  for (const auto& e : unpack_records_to_extents(records, count, dst))
    std::memcpy(dst_region + e.dst_offset, bounce + e.src_offset, e.length);
}

} // namespace kvferry::transport
