// The same-host GPU data path: one kernel launch gathers and scatters all the
// blocks of a transfer plan (thousands of extents), and one kernel unpacks an
// UNPACK plugin's ring slot (or up to 16 completed slots) into scattered KV
// blocks. See docs/gpu.md for the design, wiring and H100 measurements.
// Completion is a CUDA event the caller polls (done()) from its progress loop,
// never a blocking call on a scheduler thread.
//
// Typical use by a transfer actor, for a same-host peer whose region was
// opened with ipc_region_cache:
//
//   gpu_copy_engine engine{gpu};                       // once per GPU
//   auto ticket = engine.copy(peer_region, my_region, extents);
//   ... later, in the progress loop ...
//   if (engine.done(ticket)) reply_arrived();          // throws gpu_error on
//   failure
//
// or, when the same block list is copied for every layer:
//
//   auto plan = engine.prepare(extents, src_layer_bytes, dst_layer_bytes);
//   for (layer...) tickets.push_back(engine.launch(plan, src_layer_base,
//   dst_layer_base)); engine.release(plan);                              //
//   after the last launch
//
// Bounds (documented, fixed at construction): at most `plan_slots` prepared
// plans at once (default 8) and `event_slots` launches in flight (default 64);
// each plan slot keeps one pinned staging buffer and one device buffer that
// grow to the largest plan seen and are reused, so steady state allocates and
// registers nothing: at most plan_slots x the largest packed plan (28 bytes
// per extent, 1.75 MiB for 65,536 extents) of each. Exceeding a bound throws
// gpu_error (never blocks).
//
// Plans are uploaded on a second stream of the engine, so that the upload of
// the next plan overlaps the kernel still copying (a launch waits on the GPU
// for its plan's upload, an upload for the last launch of the slot it
// overwrites). prepare() reuses a slot the GPU is done with and whose
// buffers are large enough, so a caller with one plan at a time grows one
// slot only; with none such it takes the free slots in turn, so the host
// packs plans up to plan_slots ahead of the GPU without waiting for it (and
// then every slot grows to the largest plan, the bound above).
// One engine is used from one thread (the transfer actor's).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "kvferry/transport/copy_plan.hpp"
#include "kvferry/transport/gpu_memory.hpp"
#include "kvferry/transport/table_plan.hpp"
#include "kvferry/transport/unpack.hpp"

namespace kvferry::transport {

/// Knobs of the copy kernel (defaults are the ones measured best on the H100,
/// see docs/gpu.md).
struct copy_tuning {
  std::uint32_t item_bytes = 8192; // bytes per warp task (multiple of 16)
  int unroll = 8;        // 16-byte loads in flight per lane: 4, 8 or 16
  bool streaming = true; // __ldcs/__stcs: don't keep copied bytes in L2
  int threads_per_block = 256;
  int blocks_per_sm = 0; // 0: as many as occupancy allows
  /// Hopper bulk copies (cp.async.bulk global->shared->global, completion on
  /// an mbarrier): one lane per warp drives a `bulk_stages`-deep pipeline of
  /// item_bytes pieces. Used only when every item and both bases are 16-byte
  /// aligned with lengths a multiple of 16 (else the SIMT kernel runs).
  bool bulk = false;
  int bulk_stages = 4;
  /// Loads with ld.global.nc.L2::256B (prefetch whole 256-byte L2 sectors).
  bool prefetch_l2_256 = false;
  /// Launch only the warps the item rounds need (see kernels.cu balanced_grid).
  bool balance_rounds = true;
  /// A whole block (not a warp) copies each item (experimental, see
  /// docs/gpu.md).
  bool cta_per_item = false;
  /// The SIMT kernel reads a host-cut list of work items (24 bytes each) as
  /// before issue #5, instead of the packed plan: kept to compare the two
  /// kernels in one run (bench ipc --sweep). prepare() then costs a host loop
  /// per item.
  bool host_item_list = false;
  /// Warps claim items from a counter in device memory (one atomic per item,
  /// issued while the previous item copies) instead of each taking every
  /// n-th item, so that a warp slowed down takes fewer items and none idles
  /// at the end. Packed plans only. The default since three H100 runs put it
  /// 1.0-1.5% ahead of striding at 64 KiB blocks (and within 0.7% behind at
  /// 4 and 16 KiB), see docs/gpu.md.
  bool claim_items = true;
  /// Plans whose coalesced extents average at least this many bytes run the
  /// block-per-item kernel instead: one thread block (not a warp) per work
  /// item of the packed plan, and a grid with a block for every item instead
  /// of a persistent one. The GPU then hands the items out in plan order, so
  /// the items in flight are neighbours (see kernels.cu): +1-3% at 16 KiB to
  /// 2 MiB blocks on the H100, but -10% at 4 KiB, where each block would
  /// search 65536 extents for 4 KiB of copying (docs/gpu.md, v9). A block
  /// copies its item in item_bytes / (threads_per_block * 16) loads per
  /// thread; `unroll` and `claim_items` are the warp kernel's. 0: always;
  /// UINT64_MAX: never.
  std::uint64_t block_per_item_from = 16384;
  /// prepare() hands the kernel the extents in increasing destination offset
  /// (sorted into a buffer of the plan slot, unless they already are): the
  /// items in flight together then write neighbouring memory. Costs a sort
  /// on the host, ~10 ns per extent, paid once per prepared plan.
  bool order_by_destination = false;
  /// The engine's stream gets the device's highest priority: when its kernels
  /// and other kernels of this process (the demo's pattern fill, on a
  /// lowest-priority stream) wait for SMs at once, the copy's thread blocks
  /// are dispatched first. Priorities order work within one process only;
  /// kernels of other processes share the GPU by time slices regardless.
  /// Off by default: it brought the demo nothing (docs/gpu.md, "Contention
  /// in the demo").
  bool high_priority_stream = false;
  /// The plain kernel (issue #18's baseline): a thread block per work item
  /// of the packed plan, blocks striding over the items, 16-byte plain loads
  /// and stores, nothing else. With item_bytes at least the plan's block
  /// size that is a block per extent; plain_copy_tuning() (copy_choice.hpp)
  /// has the measured shape (512 threads, 8 blocks per SM, 2 MiB items).
  /// `unroll`, `streaming`, `claim_items` and `block_per_item_from` do not
  /// apply to it.
  bool plain = false;
};

/// The kernel for plans whose extents average at least `from_bytes` (until
/// the next band's): an engine can run a different kernel per block size.
/// copy_choice.hpp picks the bands per GPU.
struct copy_band {
  std::uint64_t from_bytes = 0;
  copy_tuning tuning;
};

struct copy_plan_id {
  std::uint32_t slot = 0;
  std::uint64_t generation = 0;
};

struct copy_ticket {
  std::uint32_t slot = 0;
  std::uint64_t generation = 0;
};

/// When a copy kernel ran, from CUDA events recorded on the engine's stream
/// right before and after it. It starts once the stream reaches the kernel
/// (earlier launches and the plan upload done, this process's context
/// scheduled on the GPU) and includes any wait of its thread blocks for SMs
/// that other kernels of this process hold. `gpu_time` is the exact
/// difference of the two events; `started`/`ended` place them on this host's
/// steady_clock through an anchor (an event the engine records and sees
/// complete by spinning, renewed at most every 50 ms while no launch is in
/// flight): they can be late by the microsecond or two the host needs to see
/// an event complete. No timing while the anchor could not be renewed (its
/// event waited more than 10 ms for the GPU).
struct kernel_timing {
  std::chrono::steady_clock::time_point started, ended;
  std::chrono::nanoseconds gpu_time{0};
};

class gpu_copy_engine {
public:
  explicit gpu_copy_engine(int gpu, copy_tuning tuning = {},
                           std::size_t plan_slots = 8,
                           std::size_t event_slots = 64);
  /// One kernel per band of block sizes: prepare() picks the band of the
  /// plan's average extent length (sampled from at most 64 extents). Bands
  /// in increasing from_bytes, the first from 0; the stream's priority is
  /// the first band's.
  gpu_copy_engine(int gpu, std::vector<copy_band> bands,
                  std::size_t plan_slots = 8, std::size_t event_slots = 64);
  ~gpu_copy_engine();
  gpu_copy_engine(const gpu_copy_engine&) = delete;
  gpu_copy_engine& operator=(const gpu_copy_engine&) = delete;

  /// Checks the extents against the region sizes (extent_error naming the
  /// extent), coalesces them and uploads them with the index of each
  /// one's first work item (copy_plan.hpp's packed plan: one host pass, one
  /// asynchronous copy on the engine's stream; the kernel cuts the items).
  /// The bulk, block-per-item and host_item_list tunings upload a host-cut
  /// work item list instead. The plan stays until release().
  copy_plan_id prepare(const std::vector<copy_extent>& extents,
                       std::uint64_t src_region_bytes,
                       std::uint64_t dst_region_bytes);
  /// The same for extents in virtual offsets over region tables
  /// (copy_plan.hpp, region_layout): each extent translated to its offset
  /// from the launch base while it is packed (one host pass), checked
  /// against its region (extent_error with check_table_side's
  /// message). Launch with bases that cover src.span() and dst.span().
  copy_plan_id prepare(const std::vector<copy_extent>& extents,
                       const region_layout& src, const region_layout& dst);
  /// A plan packed in virtual offsets elsewhere (pack_virtual_plan, or an
  /// endpoint caller's pack_one_sided, issue #16): `size` of it in `packed`
  /// (size.bytes() bytes), its extents checked against both layouts' sizes
  /// by whoever packed it. Copied into a plan slot with both layouts'
  /// region offsets, through which the kernel translates each extent
  /// (table_plan.hpp, region_bases): no pass over the extents here. Only
  /// for the packed-plan kernels: std::invalid_argument for a band whose
  /// tuning reads an item list or orders by destination. Launch with bases
  /// that cover src.span() and dst.span().
  copy_plan_id prepare_virtual(const void* packed, const packed_plan_size& size,
                               const region_layout& src,
                               const region_layout& dst);
  /// One kernel launch of a prepared plan between the given bases (which
  /// must be regions at least as large as the plan was checked against).
  copy_ticket launch(copy_plan_id plan, const std::byte* src_base,
                     std::byte* dst_base);
  /// Frees the plan's slot for reuse; launches already made still complete.
  void release(copy_plan_id plan);
  /// prepare() over region layouts packs a plan of at least 16,384 extents
  /// (a vector call over 4 KiB KV blocks has 65,536) in parts on up to
  /// `threads` threads: this one and threads - 1 helpers of the engine's
  /// own (plan_crew.hpp), started on the first such plan and asleep between
  /// plans; every part at least 8,192 extents. 1 (the default): this
  /// thread alone.
  void set_plan_threads(std::size_t threads);

  /// prepare + launch + release in one call (the plan slot is recycled as
  /// soon as the launch is enqueued: stream order protects its buffers).
  copy_ticket copy(const memory_view& src, const memory_view& dst,
                   const std::vector<copy_extent>& extents);

  /// Launches the unpack kernel for receive `seq` of an UNPACK plugin:
  /// `device_handle` is the GPU-visible ncclNetUnpackHandle the plugin filled
  /// in; `bounce_bytes` bounds its bounce buffer. Records that fall outside
  /// bounce or destination are skipped and reported by done() as gpu_error.
  copy_ticket unpack(const void* device_handle, std::uint64_t seq,
                     std::uint64_t bounce_bytes, const memory_view& dst_region,
                     const unpack_destination& dst);

  /// Unpacks receives first_seq .. first_seq + where.size() - 1 (at most 16,
  /// all completed) in ONE launch; where[k] is receive first_seq + k's
  /// destination. Cheaper than one unpack() per receive when several are
  /// done at once (each launch costs a few microseconds, a 4 MiB receive ~3).
  copy_ticket unpack_batch(const void* device_handle, std::uint64_t first_seq,
                           const std::vector<unpack_destination>& where,
                           std::uint64_t bounce_bytes,
                           const memory_view& dst_region);

  /// Makes the engine's stream wait for `event` (a cudaEvent_t of this
  /// process, as std::uint64_t; gpu_event.hpp) before the work queued after
  /// this call, e.g. the next launch: the GPU waits, no host thread does.
  void wait_event(std::uint64_t event);

  /// True once the launch finished; throws gpu_error if it failed (CUDA error
  /// or rejected unpack records). A ticket older than `event_slots` launches
  /// reads as done.
  bool done(copy_ticket ticket);
  /// Polls done() until `timeout`; throws gpu_error when the deadline passes.
  void wait(copy_ticket ticket, std::chrono::milliseconds timeout);
  /// When the kernel of a finished launch() ran (see kernel_timing). Empty
  /// for unpack tickets, before done(ticket) returned true, and once the
  /// ticket's slot was reused (`event_slots` launches later).
  std::optional<kernel_timing> timing_of(copy_ticket ticket);

  int device() const { return gpu_; }
  /// The first band's tuning (the only one for a single-tuning engine).
  const copy_tuning& tuning() const { return tuning_; }
  const std::vector<copy_band>& bands() const { return bands_; }
  /// The engine's cudaStream_t (as void*), for callers that time or chain.
  void* native_stream() const;
  /// Work items the kernel of `plan` runs (for benchmarks).
  std::size_t work_items(copy_plan_id plan) const;
  /// Bytes `plan` copies, counted while it was packed (a caller that
  /// reports them needs no pass of its own over the extents).
  std::uint64_t copied_bytes(copy_plan_id plan) const;
  /// Blocks the copy kernel is launched with (persistent grid; the first
  /// band's).
  int grid_blocks() const { return grid_blocks_; }

private:
  void require_unpack_slot_free(std::uint64_t seq);
  std::size_t band_of(const std::vector<copy_extent>& extents) const;
  struct impl;
  int gpu_;
  std::vector<copy_band> bands_;
  copy_tuning tuning_;
  int grid_blocks_ = 0;
  std::vector<int> band_grid_blocks_;
  std::unique_ptr<impl> impl_;
};

/// The bands of the copy kernel chosen for `gpu` (copy_choice.hpp:
/// KVFERRY_COPY_KERNEL, the cache, or an autotune now), with `engine_wide`'s
/// stream priority; `engine_wide` alone when choosing failed (logged). What
/// a transfer actor builds its engine from:
///   gpu_copy_engine engine{gpu, chosen_copy_bands(gpu, tuning)};
std::vector<copy_band> chosen_copy_bands(int gpu,
                                         const copy_tuning& engine_wide = {});

/// Throws std::invalid_argument naming the band that an engine cannot run.
void check_copy_bands(const std::vector<copy_band>& bands);
/// The band whose kernel runs these extents (gpu_copy_engine::prepare).
std::size_t band_for_extents(const std::vector<copy_band>& bands,
                             const std::vector<copy_extent>& extents);
/// The band whose kernel runs extents of `average` bytes.
std::size_t band_for_average(const std::vector<copy_band>& bands,
                             std::uint64_t average);

/// Test and benchmark helpers (device memory only).
/// Fills [data, data+bytes) with a pseudo-random pattern derived from `seed`.
void gpu_fill_pattern(int gpu, std::byte* data, std::size_t bytes,
                      std::uint64_t seed);
/// Bytes of dst that differ from src over every extent (synchronous).
std::uint64_t gpu_count_mismatches(int gpu, const std::byte* src_base,
                                   const std::byte* dst_base,
                                   const std::vector<copy_extent>& extents);

} // namespace kvferry::transport
