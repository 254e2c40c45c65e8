// Internal: the kernel launchers (kernels.cu), called by gpu_copy.cpp. Only
// compiled in CUDA builds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "kvferry/transport/copy_plan.hpp"
#include "kvferry/transport/gpu_copy.hpp"
#include "kvferry/transport/net_v7.h"

namespace kvferry::transport::kernels {

/// Blocks per SM the copy kernel of this tuning can keep resident.
int copy_blocks_per_sm(const copy_tuning& tuning);

/// True when this tuning's kernel (bulk or block-per-item) reads a host-cut
/// list of work items; the default kernel reads the packed plan instead.
bool uses_item_list(const copy_tuning& tuning);

/// The ticket counter of copy_tuning::claim_items: 8 bytes of device memory
/// (zeroed once) and how many tickets the launches enqueued so far draw.
struct claim_counter {
  unsigned long long* device = nullptr;
  std::uint64_t drawn = 0;
};

/// True when launch_extent_copy runs the block-per-item kernel for a packed
/// plan of this shape (copy_tuning::block_per_item_from).
bool runs_block_per_item(const copy_tuning& tuning, std::uint32_t extent_count,
                         std::uint32_t item_count);

/// Both sides' region bases of a plan in virtual offsets (table_plan.hpp,
/// pack_virtual_plan): `base` arrays in device memory.
struct plan_bases {
  region_bases src, dst;
};

/// The default copy: one launch over the packed plan (copy_plan.hpp, arrays
/// in device memory); the kernel cuts the extents into items itself. With
/// `claims` (launches on one stream only), warps claim items from it. With
/// `at`, the plan's offsets are virtual and each extent is translated
/// through its region's base (a second instantiation of each kernel: the
/// launch-relative one is unchanged).
cudaError_t launch_extent_copy(const copy_extent* extents,
                               const std::uint32_t* first_item,
                               std::uint32_t extent_count,
                               std::uint32_t item_count,
                               const std::byte* src_base, std::byte* dst_base,
                               const copy_tuning& tuning, int grid_blocks,
                               claim_counter* claims, cudaStream_t stream,
                               const plan_bases* at = nullptr);

/// True when the bulk (TMA) kernel can copy these items (host-side check of
/// offsets and lengths; base alignment is checked at launch).
bool bulk_eligible(const std::vector<copy_work_item>& items,
                   std::uint32_t item_bytes);

cudaError_t launch_batched_copy(const copy_work_item* items,
                                std::uint32_t item_count,
                                const std::byte* src_base, std::byte* dst_base,
                                const copy_tuning& tuning, int grid_blocks,
                                bool items_bulk_eligible, cudaStream_t stream);

struct unpack_args {
  const ncclNetUnpackHandle* handle; // device-visible
  int slot;
  std::uint64_t bounce_bytes;
  std::byte* dst_region;
  std::uint64_t dst_region_bytes;
  std::uint64_t base_offset;          // contiguous destination
  std::uint64_t block_bytes;          // 0: contiguous
  const std::uint64_t* block_offsets; // device array, block_count entries
  std::uint64_t block_count;
  unsigned int* rejected; // device-visible counter of bad records
  // Small block tables travel in the kernel's parameters instead: no upload.
  static constexpr int inline_blocks = 384;
  std::uint64_t inline_offsets[inline_blocks];
};
cudaError_t launch_unpack(const unpack_args& args, cudaStream_t stream);

struct unpack_receive {
  int slot;
  std::uint64_t base_offset;
  std::uint64_t block_bytes;          // 0: contiguous
  const std::uint64_t* block_offsets; // device array
  std::uint64_t block_count;
};
struct unpack_batch_args {
  const ncclNetUnpackHandle* handle;
  std::uint64_t bounce_bytes;
  std::byte* dst_region;
  std::uint64_t dst_region_bytes;
  unsigned int* rejected;
  std::uint32_t receives; // 1..NCCL_NET_UNPACK_SLOTS
  unpack_receive receive[NCCL_NET_UNPACK_SLOTS];
};
cudaError_t launch_unpack_batch(const unpack_batch_args& args, int grid_blocks,
                                cudaStream_t stream);

cudaError_t launch_fill_pattern(std::byte* data, std::size_t bytes,
                                std::uint64_t seed, cudaStream_t stream);
cudaError_t
launch_count_mismatches(const copy_work_item* items, std::uint32_t item_count,
                        const std::byte* src_base, const std::byte* dst_base,
                        unsigned long long* mismatches, cudaStream_t stream);

} // namespace kvferry::transport::kernels
