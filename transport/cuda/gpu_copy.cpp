#include "kvferry/transport/gpu_copy.hpp"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <thread>

#ifdef KVFERRY_HAVE_CUDA
#include <cstring>

#include <cuda_runtime_api.h>

#include "cuda_check.hpp"
#include "kernels.hpp"
#include "kvferry/transport/plan_crew.hpp"
#endif

namespace kvferry::transport {

void check_copy_bands(const std::vector<copy_band>& bands) {
  if (bands.empty() || bands.front().from_bytes != 0)
    throw std::invalid_argument(
        "gpu_copy_engine: the first copy band must start at 0 bytes");
  for (std::size_t k = 0; k < bands.size(); ++k) {
    const auto& t = bands[k].tuning;
    const std::string which = "copy band " + std::to_string(k) + " (from " +
                              std::to_string(bands[k].from_bytes) + " bytes): ";
    if (k > 0 && bands[k].from_bytes <= bands[k - 1].from_bytes)
      throw std::invalid_argument(which +
                                  "bands must start at increasing sizes");
    if (t.item_bytes == 0 || t.item_bytes % 16 != 0)
      throw std::invalid_argument(
          which + "copy_tuning.item_bytes must be a positive multiple of 16");
    if (t.threads_per_block < 32 || t.threads_per_block % 32 != 0)
      throw std::invalid_argument(
          which + "copy_tuning.threads_per_block must be a multiple of 32");
  }
}

std::size_t band_for_extents(const std::vector<copy_band>& bands,
                             const std::vector<copy_extent>& extents) {
  if (bands.size() < 2 || extents.empty())
    return 0;
  // A sample keeps prepare() free of a pass over every extent; KV plans are
  // blocks of one size, so a few of them tell the size.
  constexpr std::size_t samples = 64;
  const std::size_t n = extents.size(), k = std::min(n, samples);
  std::uint64_t sum = 0;
  for (std::size_t j = 0; j < k; ++j)
    sum += extents[j * n / k].length;
  return band_for_average(bands, sum / k);
}

std::size_t band_for_average(const std::vector<copy_band>& bands,
                             std::uint64_t average) {
  std::size_t band = 0;
  while (band + 1 < bands.size() && bands[band + 1].from_bytes <= average)
    ++band;
  return band;
}

std::size_t
gpu_copy_engine::band_of(const std::vector<copy_extent>& extents) const {
  return band_for_extents(bands_, extents);
}

#ifdef KVFERRY_HAVE_CUDA

namespace {

// Whether this tuning's warp kernel draws its items from the claim counter
// (for plans it runs on: kernels::runs_block_per_item).
bool claims_items(const copy_tuning& t) {
  return t.claim_items && !t.plain && !kernels::uses_item_list(t);
}

// The extents in the order the kernel should take them
// (copy_tuning::order_by_destination). A fault in a plan that had to be
// sorted is named by the caller's index, so those are checked first.
const std::vector<copy_extent>&
kernel_order(const std::vector<copy_extent>& extents,
             std::vector<copy_extent>& scratch, const copy_tuning& tuning,
             std::uint64_t src_region_bytes, std::uint64_t dst_region_bytes) {
  if (!tuning.order_by_destination)
    return extents;
  const auto& ordered = in_destination_order(extents, scratch);
  if (&ordered != &extents)
    if (auto problem =
            check_extents(extents, src_region_bytes, dst_region_bytes))
      throw extent_error(*problem);
  return ordered;
}

// A pinned host buffer and a device buffer of T that grow to the largest
// request and are then reused: steady state allocates nothing.
template<typename T>
struct staged_array {
  T* host = nullptr;
  T* device = nullptr;
  std::size_t capacity = 0;

  void reserve(std::size_t n, int gpu) {
    if (n <= capacity)
      return;
    std::size_t grown = capacity == 0 ? 1024 : capacity;
    while (grown < n)
      grown *= 2;
    // cudaFree waits for kernels still reading the old buffer.
    free_all();
    check_cuda(
        cudaMallocHost(reinterpret_cast<void**>(&host), grown * sizeof(T)),
        "cudaMallocHost (plan staging)", gpu);
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&device), grown * sizeof(T)),
               "cudaMalloc (plan descriptors)", gpu);
    capacity = grown;
  }
  void free_all() {
    if (host)
      cudaFreeHost(host);
    if (device)
      cudaFree(device);
    host = nullptr;
    device = nullptr;
    capacity = 0;
  }
};

} // namespace

struct gpu_copy_engine::impl {
  struct plan_slot {
    bool reserved = false;
    std::uint64_t generation = 0;
    // Default kernel: the packed plan (extents + first item of each), built
    // straight into pinned staging by one pass and uploaded by one copy.
    staged_array<std::byte> packed;
    packed_plan_size packed_size;
    // Bulk and block-per-item variants: the host-cut work item list.
    staged_array<copy_work_item> items;
    std::vector<copy_work_item> scratch; // host partitioning buffer, reused
    std::vector<copy_extent> ordered;    // copy_tuning::order_by_destination
    std::vector<copy_extent> translated; // region layouts, item-list kernels
    std::uint32_t item_count = 0;
    std::uint64_t copied = 0; // bytes the plan copies
    std::size_t band = 0;     // whose kernel runs this plan
    // A plan in virtual offsets (prepare_virtual): both sides' region bases
    // follow the packed plan in `packed`; `bases` points at them (device).
    bool virtual_offsets = false;
    kernels::plan_bases bases;
    bool bulk_eligible = false;     // every item suits the bulk (TMA) kernel
    cudaEvent_t uploaded = nullptr; // on `uploads`: staging may be rewritten
                                    // and the kernel may read the plan
    cudaEvent_t consumed = nullptr; // on `stream`, after the slot's last
                                    // launch: the device buffer may be
                                    // overwritten
  };
  // `started` and `ended` time a copy kernel (timing_of): its GPU time is
  // their difference. `event` marks completion and takes no timestamp, so
  // launches that are not timed (unpack) cost what they did before timing
  // existed. Made once per slot: timing a launch allocates nothing.
  struct event_slot {
    cudaEvent_t started = nullptr; // right before a copy kernel
    cudaEvent_t ended = nullptr;   // right after it
    cudaEvent_t event = nullptr;   // after the launch's work: completion
    std::uint64_t generation = 0;
    bool pending = false;
    bool kernel_timed = false; // `started` belongs to this launch
    int unpack_slot = -1;      // whose rejected counter to check on completion
  };
  struct unpack_slot {
    staged_array<std::uint64_t> blocks;
    unsigned* rejected = nullptr; // pinned, mapped: the kernel counts into it
    unsigned* rejected_device = nullptr;
    cudaEvent_t uploaded = nullptr;
    std::uint32_t last_event = 0;
    std::uint64_t last_generation = 0;
    std::uint64_t seq = 0;
  };

  int gpu;
  cudaStream_t stream = nullptr;  // kernels, unpacks, timing events
  cudaStream_t uploads = nullptr; // plan uploads, overlapping the kernels
  kernels::claim_counter claims;  // copy_tuning::claim_items only
  std::vector<plan_slot> plans;
  std::vector<event_slot> events;
  std::vector<unpack_slot> unpacks;
  staged_array<std::uint64_t> batch_tables; // block tables of unpack_batch
  cudaEvent_t batch_uploaded = nullptr;
  std::uint64_t next_generation = 1;
  std::size_t next_event = 0;
  std::size_t next_plan = 0; // plan slots are taken in turn
  // Packing a large plan in parts (set_plan_threads): the crew and one
  // part's buffers per member, made on the first such plan and kept.
  std::size_t plan_threads = 1;
  std::unique_ptr<plan_crew> crew;
  std::vector<packed_part> parts;
  // A part takes at least this many extents: below, one thread packs them
  // (a few nanoseconds each) sooner than a helper wakes up.
  static constexpr std::size_t min_part_extents = 8192;
  // Pairs the GPU's event clock with the host's (kernel_timing).
  cudaEvent_t anchor = nullptr;
  std::chrono::steady_clock::time_point anchor_seen;
  bool anchored = false;
  static constexpr auto anchor_period = std::chrono::milliseconds(50);
  static constexpr auto anchor_patience = std::chrono::milliseconds(10);

  impl(int gpu_, std::size_t plan_slots, std::size_t event_slots,
       bool high_priority)
      : gpu(gpu_), plans(plan_slots), events(event_slots),
        unpacks(NCCL_NET_UNPACK_SLOTS) {
    check_cuda(cudaSetDevice(gpu), "cudaSetDevice", gpu);
    int lowest = 0, highest = 0; // numerically: highest <= lowest
    check_cuda(cudaDeviceGetStreamPriorityRange(&lowest, &highest),
               "cudaDeviceGetStreamPriorityRange", gpu);
    check_cuda(cudaStreamCreateWithPriority(&stream, cudaStreamNonBlocking,
                                            high_priority ? highest : 0),
               "cudaStreamCreateWithPriority", gpu);
    check_cuda(cudaStreamCreateWithFlags(&uploads, cudaStreamNonBlocking),
               "cudaStreamCreateWithFlags (plan uploads)", gpu);
    for (auto& p : plans) {
      check_cuda(cudaEventCreateWithFlags(&p.uploaded, cudaEventDisableTiming),
                 "cudaEventCreate", gpu);
      check_cuda(cudaEventCreateWithFlags(&p.consumed, cudaEventDisableTiming),
                 "cudaEventCreate", gpu);
    }
    for (auto& e : events) {
      check_cuda(cudaEventCreate(&e.started), "cudaEventCreate", gpu);
      check_cuda(cudaEventCreate(&e.ended), "cudaEventCreate", gpu);
      check_cuda(cudaEventCreateWithFlags(&e.event, cudaEventDisableTiming),
                 "cudaEventCreate", gpu);
    }
    check_cuda(cudaEventCreate(&anchor), "cudaEventCreate", gpu);
    check_cuda(
        cudaEventCreateWithFlags(&batch_uploaded, cudaEventDisableTiming),
        "cudaEventCreate", gpu);
    for (auto& u : unpacks) {
      check_cuda(cudaEventCreateWithFlags(&u.uploaded, cudaEventDisableTiming),
                 "cudaEventCreate", gpu);
      check_cuda(cudaHostAlloc(reinterpret_cast<void**>(&u.rejected),
                               sizeof(unsigned), cudaHostAllocMapped),
                 "cudaHostAlloc (unpack error counter)", gpu);
      check_cuda(
          cudaHostGetDevicePointer(reinterpret_cast<void**>(&u.rejected_device),
                                   u.rejected, 0),
          "cudaHostGetDevicePointer", gpu);
      *u.rejected = 0;
    }
  }

  ~impl() {
    cudaSetDevice(gpu);
    if (stream)
      cudaStreamSynchronize(stream);
    if (uploads)
      cudaStreamSynchronize(uploads);
    if (claims.device)
      cudaFree(claims.device);
    for (auto& p : plans) {
      p.packed.free_all();
      p.items.free_all();
      cudaEventDestroy(p.uploaded);
      cudaEventDestroy(p.consumed);
    }
    for (auto& e : events) {
      cudaEventDestroy(e.started);
      cudaEventDestroy(e.ended);
      cudaEventDestroy(e.event);
    }
    cudaEventDestroy(anchor);
    batch_tables.free_all();
    cudaEventDestroy(batch_uploaded);
    for (auto& u : unpacks) {
      u.blocks.free_all();
      cudaFreeHost(u.rejected);
      cudaEventDestroy(u.uploaded);
    }
    if (uploads)
      cudaStreamDestroy(uploads);
    if (stream)
      cudaStreamDestroy(stream);
  }

  plan_slot& plan_of(copy_plan_id id) {
    if (id.slot >= plans.size() || !plans[id.slot].reserved ||
        plans[id.slot].generation != id.generation)
      throw std::invalid_argument("gpu_copy_engine: copy plan #" +
                                  std::to_string(id.slot) + " (generation " +
                                  std::to_string(id.generation) +
                                  ") is not prepared or was released");
    return plans[id.slot];
  }

  // Copies `bytes` of staging to the slot's device buffer on the upload
  // stream, once the kernels that read that buffer have ended.
  void upload(plan_slot& slot, void* device, const void* host,
              std::size_t bytes) {
    check_cuda(cudaStreamWaitEvent(uploads, slot.consumed, 0),
               "cudaStreamWaitEvent (plan buffer reuse)", gpu);
    check_cuda(
        cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, uploads),
        "cudaMemcpyAsync (plan upload)", gpu);
  }

  // Packs a plan of at most `extent_count` extents into the slot's pinned
  // staging with `pack` (one pass that also checks the bounds; no per-item
  // host work, no allocation once the buffers have grown) and uploads it
  // with one copy.
  template<typename Pack>
  void stage_packed(plan_slot& slot, std::size_t extent_count, Pack&& pack) {
    slot.packed.reserve(packed_plan_bytes(extent_count), gpu);
    slot.packed_size = pack(static_cast<void*>(slot.packed.host));
    slot.item_count = slot.packed_size.items;
    slot.copied = slot.packed_size.copied;
    if (slot.item_count > 0)
      upload(slot, slot.packed.device, slot.packed.host,
             slot.packed_size.bytes());
  }

  void stage_packed_plan(plan_slot& slot,
                         const std::vector<copy_extent>& extents,
                         std::uint32_t item_bytes,
                         std::uint64_t src_region_bytes,
                         std::uint64_t dst_region_bytes) {
    stage_packed(slot, extents.size(), [&](void* buffer) {
      return pack_plan(extents, item_bytes, src_region_bytes, dst_region_bytes,
                       buffer);
    });
  }

  // A plan packed in virtual offsets elsewhere, copied with both sides'
  // region bases after it (8-byte aligned) and uploaded with one copy.
  void stage_virtual(plan_slot& slot, const void* packed,
                     const packed_plan_size& size, const region_layout& src,
                     const region_layout& dst) {
    const std::size_t at = (size.bytes() + 7) / 8 * 8;
    const std::size_t bytes =
        at + (src.count + dst.count) * sizeof(std::uint64_t);
    slot.packed.reserve(bytes, gpu);
    std::memcpy(slot.packed.host, packed, size.bytes());
    auto* bases = reinterpret_cast<std::uint64_t*>(slot.packed.host + at);
    std::copy(src.offsets, src.offsets + src.count, bases);
    std::copy(dst.offsets, dst.offsets + dst.count, bases + src.count);
    const auto* device =
        reinterpret_cast<const std::uint64_t*>(slot.packed.device + at);
    slot.bases = {
        {device, static_cast<std::uint32_t>(src.count), src.shift},
        {device + src.count, static_cast<std::uint32_t>(dst.count), dst.shift}};
    slot.virtual_offsets = true;
    slot.packed_size = size;
    slot.item_count = size.items;
    slot.copied = size.copied;
    if (slot.item_count > 0)
      upload(slot, slot.packed.device, slot.packed.host, bytes);
  }

  // The bulk and block-per-item kernels read every work item from a list.
  void stage_work_items(plan_slot& slot,
                        const std::vector<copy_extent>& extents,
                        const copy_tuning& tuning,
                        std::uint64_t src_region_bytes,
                        std::uint64_t dst_region_bytes) {
    if (auto problem =
            check_extents(extents, src_region_bytes, dst_region_bytes))
      throw extent_error(*problem);
    slot.copied = total_bytes(extents);
    slot.scratch.clear();
    partition_into_work_items(coalesce(extents), tuning.item_bytes,
                              slot.scratch);
    if (slot.scratch.size() > 0xffffffffu)
      throw std::invalid_argument(
          "gpu_copy_engine::prepare: plan has more than 2^32 work items");
    slot.items.reserve(slot.scratch.size(), gpu);
    if (!slot.scratch.empty()) {
      std::memcpy(slot.items.host, slot.scratch.data(),
                  slot.scratch.size() * sizeof(copy_work_item));
      upload(slot, slot.items.device, slot.items.host,
             slot.scratch.size() * sizeof(copy_work_item));
    }
    slot.item_count = static_cast<std::uint32_t>(slot.scratch.size());
    slot.bulk_eligible =
        tuning.bulk && kernels::bulk_eligible(slot.scratch, tuning.item_bytes);
  }

  // A plan of extents counted from the region bases, the way `tuning`'s
  // kernel reads it.
  void stage_plan(plan_slot& slot, const std::vector<copy_extent>& extents,
                  const copy_tuning& tuning, std::uint64_t src_region_bytes,
                  std::uint64_t dst_region_bytes) {
    // Both check the extents against the regions first.
    const auto& ordered = kernel_order(extents, slot.ordered, tuning,
                                       src_region_bytes, dst_region_bytes);
    if (kernels::uses_item_list(tuning))
      stage_work_items(slot, ordered, tuning, src_region_bytes,
                       dst_region_bytes);
    else
      stage_packed_plan(slot, ordered, tuning.item_bytes, src_region_bytes,
                        dst_region_bytes);
  }

  // pack_plan over region layouts; a large plan in parts on the crew.
  packed_plan_size pack(const std::vector<copy_extent>& extents,
                        std::uint32_t item_bytes, const region_layout& src,
                        const region_layout& dst, void* buffer) {
    const auto count =
        std::min(plan_threads, extents.size() / min_part_extents);
    if (count < 2)
      return pack_plan(extents, item_bytes, src, dst, buffer);
    if (!crew) {
      crew = std::make_unique<plan_crew>(plan_threads - 1);
      parts.resize(plan_threads);
    }
    return pack_plan_in_parts(
        extents, item_bytes, src, dst, buffer, parts.data(), count,
        [&](std::size_t n, auto& job) { crew->run(n, job); });
  }

  // Whether the GPU is done with the slot's last plan: its upload was read
  // and the kernels that read the plan have ended. Reusing such a slot waits
  // for nothing, on the host or on the upload stream.
  bool idle(plan_slot& slot) {
    return cudaEventQuery(slot.uploaded) == cudaSuccess &&
           cudaEventQuery(slot.consumed) == cudaSuccess;
  }

  // Whether the slot's buffers already hold a plan of `extent_count` extents
  // for `tuning`'s kernel (an item list has at least one item per extent).
  static bool has_room(const plan_slot& slot, std::size_t extent_count,
                       const copy_tuning& tuning) {
    return kernels::uses_item_list(tuning)
               ? slot.items.capacity >= extent_count
               : slot.packed.capacity >= packed_plan_bytes(extent_count);
  }

  // A free plan slot for a plan of `extent_count` extents. First choice, in
  // turn: one the GPU is done with and large enough, so that a caller
  // preparing one plan at a time keeps reusing one slot and grows (pinned
  // allocation, milliseconds) no other. Otherwise the next free slot after
  // the last one taken: taken in turn, the slot rewritten is the one whose
  // upload is oldest, so a caller with many plans in flight rarely waits for
  // it (see the top of gpu_copy.hpp).
  std::uint32_t take_plan_slot(std::size_t extent_count,
                               const copy_tuning& tuning) {
    std::optional<std::size_t> next_free;
    for (std::size_t k = 0; k < plans.size(); ++k) {
      const auto index = (next_plan + k) % plans.size();
      auto& slot = plans[index];
      if (slot.reserved)
        continue;
      if (!next_free)
        next_free = index;
      if (has_room(slot, extent_count, tuning) && idle(slot))
        return take(index);
    }
    if (!next_free)
      throw gpu_error("gpu_copy_engine on GPU " + std::to_string(gpu) +
                      ": all " + std::to_string(plans.size()) +
                      " plan slots are in use");
    return take(*next_free);
  }

  std::uint32_t take(std::size_t index) {
    next_plan = index + 1;
    return static_cast<std::uint32_t>(index);
  }

  // prepare()'s frame around `stage(slot)`, which packs the plan and queues
  // its upload: a free slot whose staging may be rewritten, the upload's
  // completion recorded, errors naming the GPU.
  template<typename Stage>
  copy_plan_id prepare_in_slot(std::size_t band, const copy_tuning& tuning,
                               std::size_t extent_count, Stage&& stage) {
    const auto index = take_plan_slot(extent_count, tuning);
    auto& slot = plans[index];
    slot.band = band;
    slot.virtual_offsets = false;
    refresh_anchor(); // before this plan's upload is queued
    // The previous upload from this staging buffer must have been consumed.
    check_cuda(cudaEventSynchronize(slot.uploaded),
               "cudaEventSynchronize (staging reuse)", gpu);
    check_cuda(cudaSetDevice(gpu), "cudaSetDevice", gpu);
    try {
      stage(slot);
    } catch (const extent_error& e) { // the caller's plan: still named so
      throw extent_error("gpu_copy_engine::prepare on GPU " +
                         std::to_string(gpu) + ": " + e.what());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("gpu_copy_engine::prepare on GPU " +
                                  std::to_string(gpu) + ": " + e.what());
    }
    check_cuda(cudaEventRecord(slot.uploaded, uploads), "cudaEventRecord", gpu);
    slot.reserved = true;
    slot.generation = next_generation++;
    return copy_plan_id{index, slot.generation};
  }

  bool launches_in_flight() {
    for (auto& e : events)
      if (e.pending && cudaEventQuery(e.event) == cudaErrorNotReady)
        return true;
    return false;
  }

  // Renews the pairing of the GPU's event clock with the host's: records
  // `anchor` and spins until it completes, so that the host's reading right
  // after is within a microsecond or two of the event's GPU timestamp. Only
  // while no launch is in flight (the spin would wait for it otherwise), and
  // at most every anchor_period, so that clock drift between the two stays
  // far below a microsecond and the spin costs nothing noticeable. Another
  // process holding the GPU delays the anchor; past anchor_patience there is
  // no timing (timing_of is empty) until a later renewal succeeds.
  void refresh_anchor() {
    const auto now = std::chrono::steady_clock::now();
    if ((anchored && now - anchor_seen < anchor_period) || launches_in_flight())
      return;
    anchored = false;
    check_cuda(cudaEventRecord(anchor, stream),
               "cudaEventRecord (clock anchor)", gpu);
    cudaError_t state;
    while ((state = cudaEventQuery(anchor)) == cudaErrorNotReady)
      if (std::chrono::steady_clock::now() - now > anchor_patience)
        return;
    check_cuda(state, "cudaEventQuery (clock anchor)", gpu);
    anchor_seen = std::chrono::steady_clock::now();
    anchored = true;
  }

  // `event` on the host's steady_clock, through the anchor.
  std::chrono::steady_clock::time_point host_time_of(cudaEvent_t event) {
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, anchor, event),
               "cudaEventElapsedTime (copy kernel timing)", gpu);
    return anchor_seen +
           std::chrono::nanoseconds{static_cast<std::int64_t>(ms * 1e6)};
  }

  // The slot the next launch records into, once its previous launch is done
  // (throws before anything is enqueued when every slot is still in flight).
  event_slot& next_event_slot() {
    auto& slot = events[next_event];
    if (slot.pending) {
      const auto state = cudaEventQuery(slot.event);
      if (state == cudaErrorNotReady)
        throw gpu_error("gpu_copy_engine on GPU " + std::to_string(gpu) +
                        ": more than " + std::to_string(events.size()) +
                        " launches in flight");
      check_cuda(state, "cudaEventQuery", gpu);
      slot.pending = false;
    }
    return slot;
  }

  // Marks the start of a copy kernel about to be enqueued (timing_of).
  void record_kernel_start() {
    auto& slot = next_event_slot();
    slot.kernel_timed = false; // the slot's previous launch loses its time
    check_cuda(cudaEventRecord(slot.started, stream), "cudaEventRecord", gpu);
  }

  // Marks the end of the copy kernel just enqueued (timing_of).
  void record_kernel_end() {
    check_cuda(cudaEventRecord(events[next_event].ended, stream),
               "cudaEventRecord", gpu);
  }

  // Records an event after the work just enqueued and returns its ticket;
  // `kernel_timed`: record_kernel_start() ran right before that work.
  copy_ticket record(int unpack_slot_index, bool kernel_timed = false) {
    auto& slot = next_event_slot();
    check_cuda(cudaEventRecord(slot.event, stream), "cudaEventRecord", gpu);
    slot.generation = next_generation++;
    slot.pending = true;
    slot.kernel_timed = kernel_timed;
    slot.unpack_slot = unpack_slot_index;
    copy_ticket ticket{static_cast<std::uint32_t>(next_event), slot.generation};
    next_event = (next_event + 1) % events.size();
    return ticket;
  }
};

gpu_copy_engine::gpu_copy_engine(int gpu, copy_tuning tuning,
                                 std::size_t plan_slots,
                                 std::size_t event_slots)
    : gpu_copy_engine(gpu, std::vector<copy_band>{copy_band{0, tuning}},
                      plan_slots, event_slots) {
}

gpu_copy_engine::gpu_copy_engine(int gpu, std::vector<copy_band> bands,
                                 std::size_t plan_slots,
                                 std::size_t event_slots)
    : gpu_(gpu), bands_(std::move(bands)) {
  check_copy_bands(bands_);
  tuning_ = bands_.front().tuning;
  if (plan_slots == 0 || event_slots == 0)
    throw std::invalid_argument(
        "gpu_copy_engine needs at least one plan slot and one event slot");
  impl_ = std::make_unique<impl>(gpu, plan_slots, event_slots,
                                 tuning_.high_priority_stream);
  const bool any_claims =
      std::any_of(bands_.begin(), bands_.end(),
                  [](const copy_band& b) { return claims_items(b.tuning); });
  if (any_claims) {
    auto& counter = impl_->claims.device;
    check_cuda(cudaMalloc(reinterpret_cast<void**>(&counter), sizeof(*counter)),
               "cudaMalloc (item claim counter)", gpu);
    // On the engine's stream: its kernels must see the zero.
    check_cuda(cudaMemsetAsync(counter, 0, sizeof(*counter), impl_->stream),
               "cudaMemsetAsync (item claim counter)", gpu);
  }
  int sms = 0;
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, gpu),
             "cudaDeviceGetAttribute(multiprocessors)", gpu);
  for (const auto& band : bands_) {
    const int per_sm = band.tuning.blocks_per_sm > 0
                           ? band.tuning.blocks_per_sm
                           : kernels::copy_blocks_per_sm(band.tuning);
    band_grid_blocks_.push_back(sms * per_sm);
  }
  grid_blocks_ = band_grid_blocks_.front();
}

gpu_copy_engine::~gpu_copy_engine() = default;

void* gpu_copy_engine::native_stream() const {
  return impl_->stream;
}

copy_plan_id gpu_copy_engine::prepare(const std::vector<copy_extent>& extents,
                                      std::uint64_t src_region_bytes,
                                      std::uint64_t dst_region_bytes) {
  const auto band = band_of(extents);
  const copy_tuning& tuning = bands_[band].tuning;
  return impl_->prepare_in_slot(
      band, tuning, extents.size(), [&](impl::plan_slot& slot) {
        impl_->stage_plan(slot, extents, tuning, src_region_bytes,
                          dst_region_bytes);
      });
}

copy_plan_id gpu_copy_engine::prepare(const std::vector<copy_extent>& extents,
                                      const region_layout& src,
                                      const region_layout& dst) {
  const auto band = band_of(extents); // lengths: translation keeps them
  const copy_tuning& tuning = bands_[band].tuning;
  return impl_->prepare_in_slot(
      band, tuning, extents.size(), [&](impl::plan_slot& slot) {
        if (!kernels::uses_item_list(tuning) && !tuning.order_by_destination) {
          // The default kernel: translated while packed, one pass.
          impl_->stage_packed(slot, extents.size(), [&](void* buffer) {
            return impl_->pack(extents, tuning.item_bytes, src, dst, buffer);
          });
          return;
        }
        translate_extents(extents, src, dst, slot.translated);
        impl_->stage_plan(slot, slot.translated, tuning, src.span(),
                          dst.span());
      });
}

copy_plan_id gpu_copy_engine::prepare_virtual(const void* packed,
                                              const packed_plan_size& size,
                                              const region_layout& src,
                                              const region_layout& dst) {
  const auto band = band_for_average(
      bands_, size.extents == 0 ? 0 : size.copied / size.extents);
  const copy_tuning& tuning = bands_[band].tuning;
  if (kernels::uses_item_list(tuning) || tuning.order_by_destination ||
      !src.offsets || !dst.offsets)
    throw std::invalid_argument(
        "gpu_copy_engine::prepare_virtual: needs a packed-plan kernel in "
        "extent order and both layouts' offsets");
  return impl_->prepare_in_slot(
      band, tuning, size.extents, [&](impl::plan_slot& slot) {
        impl_->stage_virtual(slot, packed, size, src, dst);
      });
}

copy_ticket gpu_copy_engine::launch(copy_plan_id plan,
                                    const std::byte* src_base,
                                    std::byte* dst_base) {
  auto& slot = impl_->plan_of(plan);
  const copy_tuning& tuning = bands_[slot.band].tuning;
  const int grid = band_grid_blocks_[slot.band];
  check_cuda(cudaStreamWaitEvent(impl_->stream, slot.uploaded, 0),
             "cudaStreamWaitEvent (plan upload)", gpu_);
  impl_->record_kernel_start();
  if (kernels::uses_item_list(tuning)) {
    check_cuda(kernels::launch_batched_copy(slot.items.device, slot.item_count,
                                            src_base, dst_base, tuning, grid,
                                            slot.bulk_eligible, impl_->stream),
               "batched copy kernel launch", gpu_);
  } else {
    const auto packed =
        packed_plan_view::in(slot.packed.device, slot.packed_size.extents);
    check_cuda(kernels::launch_extent_copy(
                   packed.extents, packed.first_item, slot.packed_size.extents,
                   slot.item_count, src_base, dst_base, tuning, grid,
                   claims_items(tuning) ? &impl_->claims : nullptr,
                   impl_->stream, slot.virtual_offsets ? &slot.bases : nullptr),
               "batched copy kernel launch", gpu_);
  }
  impl_->record_kernel_end();
  check_cuda(cudaEventRecord(slot.consumed, impl_->stream), "cudaEventRecord",
             gpu_);
  return impl_->record(-1, true);
}

void gpu_copy_engine::release(copy_plan_id plan) {
  impl_->plan_of(plan).reserved = false;
}

void gpu_copy_engine::set_plan_threads(std::size_t threads) {
  impl_->plan_threads = std::max<std::size_t>(threads, 1);
  impl_->crew.reset();
  impl_->parts.clear();
}

void gpu_copy_engine::wait_event(std::uint64_t event) {
  check_cuda(
      cudaStreamWaitEvent(
          impl_->stream,
          reinterpret_cast<cudaEvent_t>(static_cast<std::uintptr_t>(event)), 0),
      "cudaStreamWaitEvent (the event to wait for)", gpu_);
}

std::size_t gpu_copy_engine::work_items(copy_plan_id plan) const {
  return impl_->plan_of(plan).item_count;
}

std::uint64_t gpu_copy_engine::copied_bytes(copy_plan_id plan) const {
  return impl_->plan_of(plan).copied;
}

copy_ticket gpu_copy_engine::copy(const memory_view& src,
                                  const memory_view& dst,
                                  const std::vector<copy_extent>& extents) {
  const auto plan = prepare(extents, src.bytes, dst.bytes);
  copy_ticket ticket;
  try {
    ticket = launch(plan, src.base, dst.base);
  } catch (...) {
    release(plan);
    throw;
  }
  release(plan); // stream order keeps its buffers valid for this launch
  return ticket;
}

void gpu_copy_engine::require_unpack_slot_free(std::uint64_t seq) {
  const int slot_index = unpack_slot_of(seq);
  auto& slot = impl_->unpacks[static_cast<std::size_t>(slot_index)];
  if (slot.last_generation != 0 &&
      !done(copy_ticket{slot.last_event, slot.last_generation}))
    throw gpu_error("gpu_copy_engine::unpack on GPU " + std::to_string(gpu_) +
                    ": receive " + std::to_string(seq) + " reuses ring slot " +
                    std::to_string(slot_index) + " while receive " +
                    std::to_string(slot.seq) + " is still unpacking");
}

copy_ticket gpu_copy_engine::unpack_batch(
    const void* device_handle, std::uint64_t first_seq,
    const std::vector<unpack_destination>& where, std::uint64_t bounce_bytes,
    const memory_view& dst_region) {
  if (where.empty() || where.size() > NCCL_NET_UNPACK_SLOTS)
    throw std::invalid_argument(
        "gpu_copy_engine::unpack_batch: " + std::to_string(where.size()) +
        " receives; a batch holds 1 to 16");
  std::size_t table_entries = 0;
  for (std::size_t k = 0; k < where.size(); ++k) {
    require_unpack_slot_free(first_seq + k);
    if (where[k].block_bytes != 0 && where[k].block_offsets.empty())
      throw std::invalid_argument(
          "gpu_copy_engine::unpack_batch: block destination without blocks");
    table_entries += where[k].block_offsets.size();
  }
  check_cuda(cudaSetDevice(gpu_), "cudaSetDevice", gpu_);
  kernels::unpack_batch_args args{
      static_cast<const ncclNetUnpackHandle*>(device_handle),
      bounce_bytes,
      dst_region.base,
      dst_region.bytes,
      nullptr,
      static_cast<std::uint32_t>(where.size()),
      {}};
  auto& tables = impl_->batch_tables;
  if (table_entries > 0) {
    check_cuda(cudaEventSynchronize(impl_->batch_uploaded),
               "cudaEventSynchronize (staging reuse)", gpu_);
    tables.reserve(table_entries, gpu_);
  }
  std::size_t at = 0;
  for (std::size_t k = 0; k < where.size(); ++k) {
    const auto& w = where[k];
    args.receive[k] = kernels::unpack_receive{
        unpack_slot_of(first_seq + k), w.base_offset, w.block_bytes,
        tables.device + at, w.block_offsets.size()};
    std::copy(w.block_offsets.begin(), w.block_offsets.end(), tables.host + at);
    at += w.block_offsets.size();
  }
  if (table_entries > 0) {
    check_cuda(cudaMemcpyAsync(tables.device, tables.host,
                               table_entries * sizeof(std::uint64_t),
                               cudaMemcpyHostToDevice, impl_->stream),
               "cudaMemcpyAsync (unpack block tables)", gpu_);
    check_cuda(cudaEventRecord(impl_->batch_uploaded, impl_->stream),
               "cudaEventRecord", gpu_);
  }
  const int first_slot = unpack_slot_of(first_seq);
  auto& counter_slot = impl_->unpacks[static_cast<std::size_t>(first_slot)];
  *counter_slot.rejected = 0;
  args.rejected = counter_slot.rejected_device;
  check_cuda(kernels::launch_unpack_batch(args, grid_blocks_, impl_->stream),
             "unpack batch kernel launch", gpu_);
  const auto ticket = impl_->record(first_slot);
  for (std::size_t k = 0; k < where.size(); ++k) {
    auto& slot =
        impl_->unpacks[static_cast<std::size_t>(unpack_slot_of(first_seq + k))];
    slot.last_event = ticket.slot;
    slot.last_generation = ticket.generation;
    slot.seq = first_seq + k;
  }
  return ticket;
}

copy_ticket gpu_copy_engine::unpack(const void* device_handle,
                                    std::uint64_t seq,
                                    std::uint64_t bounce_bytes,
                                    const memory_view& dst_region,
                                    const unpack_destination& dst) {
  const int slot_index = unpack_slot_of(seq);
  auto& slot = impl_->unpacks[static_cast<std::size_t>(slot_index)];
  require_unpack_slot_free(seq);
  if (dst.block_bytes != 0 && dst.block_offsets.empty())
    throw std::invalid_argument(
        "gpu_copy_engine::unpack: block destination without blocks");
  check_cuda(cudaSetDevice(gpu_), "cudaSetDevice", gpu_);
  kernels::unpack_args args{
      static_cast<const ncclNetUnpackHandle*>(device_handle),
      slot_index,
      bounce_bytes,
      dst_region.base,
      dst_region.bytes,
      dst.base_offset,
      dst.block_bytes,
      nullptr,
      dst.block_offsets.size(),
      slot.rejected_device,
      {}};
  const bool table_inline =
      dst.block_offsets.size() <= kernels::unpack_args::inline_blocks;
  if (table_inline) {
    std::copy(dst.block_offsets.begin(), dst.block_offsets.end(),
              args.inline_offsets);
  } else {
    check_cuda(cudaEventSynchronize(slot.uploaded),
               "cudaEventSynchronize (staging reuse)", gpu_);
    slot.blocks.reserve(dst.block_offsets.size(), gpu_);
    std::memcpy(slot.blocks.host, dst.block_offsets.data(),
                dst.block_offsets.size() * sizeof(std::uint64_t));
    check_cuda(cudaMemcpyAsync(slot.blocks.device, slot.blocks.host,
                               dst.block_offsets.size() * sizeof(std::uint64_t),
                               cudaMemcpyHostToDevice, impl_->stream),
               "cudaMemcpyAsync (unpack block table)", gpu_);
    check_cuda(cudaEventRecord(slot.uploaded, impl_->stream), "cudaEventRecord",
               gpu_);
    args.block_offsets = slot.blocks.device;
  }
  *slot.rejected = 0;
  check_cuda(kernels::launch_unpack(args, impl_->stream),
             "unpack kernel launch", gpu_);
  const auto ticket = impl_->record(slot_index);
  slot.last_event = ticket.slot;
  slot.last_generation = ticket.generation;
  slot.seq = seq;
  return ticket;
}

bool gpu_copy_engine::done(copy_ticket ticket) {
  if (ticket.slot >= impl_->events.size())
    throw std::invalid_argument("gpu_copy_engine::done: no such ticket slot " +
                                std::to_string(ticket.slot));
  auto& slot = impl_->events[ticket.slot];
  if (slot.generation != ticket.generation || !slot.pending)
    return true; // completed earlier (its slot was only reused after
                 // completion)
  const auto state = cudaEventQuery(slot.event);
  if (state == cudaErrorNotReady)
    return false;
  check_cuda(state, "copy completion (cudaEventQuery)", gpu_);
  slot.pending = false;
  if (slot.unpack_slot >= 0) {
    const unsigned rejected =
        *impl_->unpacks[static_cast<std::size_t>(slot.unpack_slot)].rejected;
    if (rejected != 0)
      throw gpu_error(
          "unpack of ring slot " + std::to_string(slot.unpack_slot) +
          " on GPU " + std::to_string(gpu_) + ": " + std::to_string(rejected) +
          " record(s) pointed outside the bounce buffer or the destination and "
          "were not copied");
  }
  return true;
}

std::optional<kernel_timing> gpu_copy_engine::timing_of(copy_ticket ticket) {
  if (ticket.slot >= impl_->events.size())
    throw std::invalid_argument(
        "gpu_copy_engine::timing_of: no such ticket slot " +
        std::to_string(ticket.slot));
  const auto& slot = impl_->events[ticket.slot];
  if (slot.generation != ticket.generation || slot.pending ||
      !slot.kernel_timed || !impl_->anchored)
    return std::nullopt;
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, slot.started, slot.ended),
             "cudaEventElapsedTime (copy kernel timing)", gpu_);
  kernel_timing timing;
  timing.gpu_time =
      std::chrono::nanoseconds{static_cast<std::int64_t>(ms * 1e6 + 0.5)};
  timing.started = impl_->host_time_of(slot.started);
  timing.ended = timing.started + timing.gpu_time;
  return timing;
}

void gpu_copy_engine::wait(copy_ticket ticket,
                           std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done(ticket)) {
    if (std::chrono::steady_clock::now() > deadline)
      throw gpu_error("gpu_copy_engine on GPU " + std::to_string(gpu_) +
                      ": copy did not complete within " +
                      std::to_string(timeout.count()) + " ms");
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

void gpu_fill_pattern(int gpu, std::byte* data, std::size_t bytes,
                      std::uint64_t seed) {
  check_cuda(cudaSetDevice(gpu), "cudaSetDevice", gpu);
  check_cuda(kernels::launch_fill_pattern(data, bytes, seed, nullptr),
             "fill kernel launch", gpu);
  check_cuda(cudaStreamSynchronize(nullptr), "fill kernel", gpu);
}

std::uint64_t gpu_count_mismatches(int gpu, const std::byte* src_base,
                                   const std::byte* dst_base,
                                   const std::vector<copy_extent>& extents) {
  check_cuda(cudaSetDevice(gpu), "cudaSetDevice", gpu);
  const auto items = partition_into_work_items(extents, 1u << 16);
  if (items.empty())
    return 0;
  copy_work_item* device_items = nullptr;
  unsigned long long* device_count = nullptr;
  check_cuda(cudaMalloc(reinterpret_cast<void**>(&device_items),
                        items.size() * sizeof(items[0])),
             "cudaMalloc (verify)", gpu);
  check_cuda(cudaMalloc(reinterpret_cast<void**>(&device_count),
                        sizeof(unsigned long long)),
             "cudaMalloc (verify)", gpu);
  unsigned long long mismatches = 0;
  cudaError_t err =
      cudaMemcpy(device_items, items.data(), items.size() * sizeof(items[0]),
                 cudaMemcpyHostToDevice);
  if (err == cudaSuccess)
    err = cudaMemset(device_count, 0, sizeof(unsigned long long));
  if (err == cudaSuccess)
    err = kernels::launch_count_mismatches(
        device_items, static_cast<std::uint32_t>(items.size()), src_base,
        dst_base, device_count, nullptr);
  if (err == cudaSuccess)
    err = cudaMemcpy(&mismatches, device_count, sizeof(mismatches),
                     cudaMemcpyDeviceToHost);
  cudaFree(device_items);
  cudaFree(device_count);
  check_cuda(err, "verification kernel", gpu);
  return mismatches;
}

#else // no CUDA: the API exists, every entry point says why it cannot work

struct gpu_copy_engine::impl {};

gpu_copy_engine::gpu_copy_engine(int gpu, copy_tuning tuning, std::size_t,
                                 std::size_t)
    : gpu_(gpu), tuning_(tuning) {
  throw_no_cuda("gpu_copy_engine");
}
gpu_copy_engine::gpu_copy_engine(int gpu, std::vector<copy_band> bands,
                                 std::size_t, std::size_t)
    : gpu_(gpu), bands_(std::move(bands)) {
  throw_no_cuda("gpu_copy_engine");
}
gpu_copy_engine::~gpu_copy_engine() = default;
void* gpu_copy_engine::native_stream() const {
  return nullptr;
}
copy_plan_id gpu_copy_engine::prepare(const std::vector<copy_extent>&,
                                      std::uint64_t, std::uint64_t) {
  throw_no_cuda("gpu_copy_engine::prepare");
}
copy_plan_id gpu_copy_engine::prepare(const std::vector<copy_extent>&,
                                      const region_layout&,
                                      const region_layout&) {
  throw_no_cuda("gpu_copy_engine::prepare");
}
copy_plan_id gpu_copy_engine::prepare_virtual(const void*,
                                              const packed_plan_size&,
                                              const region_layout&,
                                              const region_layout&) {
  throw_no_cuda("gpu_copy_engine::prepare_virtual");
}
copy_ticket gpu_copy_engine::launch(copy_plan_id, const std::byte*,
                                    std::byte*) {
  throw_no_cuda("gpu_copy_engine::launch");
}
void gpu_copy_engine::release(copy_plan_id) {
}
void gpu_copy_engine::set_plan_threads(std::size_t) {
}
void gpu_copy_engine::wait_event(std::uint64_t) {
  throw_no_cuda("gpu_copy_engine::wait_event");
}
std::size_t gpu_copy_engine::work_items(copy_plan_id) const {
  return 0;
}
std::uint64_t gpu_copy_engine::copied_bytes(copy_plan_id) const {
  return 0;
}
copy_ticket gpu_copy_engine::copy(const memory_view&, const memory_view&,
                                  const std::vector<copy_extent>&) {
  throw_no_cuda("gpu_copy_engine::copy");
}
copy_ticket gpu_copy_engine::unpack(const void*, std::uint64_t, std::uint64_t,
                                    const memory_view&,
                                    const unpack_destination&) {
  throw_no_cuda("gpu_copy_engine::unpack");
}
copy_ticket
gpu_copy_engine::unpack_batch(const void*, std::uint64_t,
                              const std::vector<unpack_destination>&,
                              std::uint64_t, const memory_view&) {
  throw_no_cuda("gpu_copy_engine::unpack_batch");
}
void gpu_copy_engine::require_unpack_slot_free(std::uint64_t) {
}
bool gpu_copy_engine::done(copy_ticket) {
  throw_no_cuda("gpu_copy_engine::done");
}
void gpu_copy_engine::wait(copy_ticket, std::chrono::milliseconds) {
  throw_no_cuda("gpu_copy_engine::wait");
}
std::optional<kernel_timing> gpu_copy_engine::timing_of(copy_ticket) {
  throw_no_cuda("gpu_copy_engine::timing_of");
}
void gpu_fill_pattern(int, std::byte*, std::size_t, std::uint64_t) {
  throw_no_cuda("gpu_fill_pattern");
}
std::uint64_t gpu_count_mismatches(int, const std::byte*, const std::byte*,
                                   const std::vector<copy_extent>&) {
  throw_no_cuda("gpu_count_mismatches");
}

#endif

} // namespace kvferry::transport
