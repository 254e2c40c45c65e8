// The staging ring of a channel: CUDA memory on a plugin whose ptrSupport
// lacks NCCL_PTR_CUDA travels through pinned bounce slots, each registered
// as host memory on one comm, with the copies done by a staging_copier
// (staging.hpp). Chunks take their slots in posting order, so nothing
// overtakes on a comm. See docs/gpu.md, "Staging for plugins without
// NCCL_PTR_CUDA".
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "channel_state.hpp"

namespace kvferry::transport::detail {

std::string channel_state::staging_context() const {
  return fmt::format("plugin {}: staging CUDA memory on the {} channel to {}",
                     net->name(), dir_name(), options.peer);
}

registration channel_state::register_staged(void* data, size_t bytes) {
  if (unpack)
    throw transport_error(
        fmt::format("{}: an UNPACK receiver can't stage (its unpack kernel "
                    "writes the destination); "
                    "this plugin must declare NCCL_PTR_CUDA",
                    staging_context()));
  if (options.staging_slots == 0)
    throw transport_error(
        fmt::format("{}: the plugin lacks NCCL_PTR_CUDA and staging is "
                    "off (channel_options::staging_slots is 0)",
                    staging_context()));
  if (!staging.memory)
    open_staging(data);
  int slot = take_registration_slot(data, bytes, NCCL_PTR_CUDA, true);
  auto& reg = regs[slot];
  reg.windows = 0;
  reg.handles.clear();
  reg.live = true;
  return handle_of(slot);
}

// Once per channel: the copier, comms x staging_slots bounce slots of
// chunk_bytes, each registered as host memory on its comm.
void channel_state::open_staging(const void* device_memory) {
  const int per_comm = options.staging_slots;
  const int total = per_comm * static_cast<int>(comms.size());
  staging.slot_bytes = options.chunk_bytes;
  try {
    staging.copier = options.staging_copier ? options.staging_copier()
                                            : make_cuda_staging_copier();
    staging.copier->open(total, device_memory);
    staging.memory = static_cast<char*>(staging.copier->allocate_host(
        static_cast<size_t>(total) * staging.slot_bytes));
  } catch (const std::exception& e) {
    free_staging();
    throw transport_error(
        fmt::format("{}: setting up {} bounce slots of {} bytes: {}",
                    staging_context(), total, staging.slot_bytes, e.what()));
  }
  staging.mhandles.assign(static_cast<size_t>(total), nullptr);
  auto& table = net->net();
  for (int slot = 0; slot < total; ++slot) {
    size_t c = static_cast<size_t>(slot / per_comm);
    auto rc = table.regMr(comms[c].comm, staging.slot_memory(slot),
                          static_cast<int>(staging.slot_bytes), NCCL_PTR_HOST,
                          &staging.mhandles[static_cast<size_t>(slot)]);
    if (rc != ncclSuccess) {
      deregister_staging();
      free_staging();
      throw plugin_error(
          net->name(), "regMr", rc,
          fmt::format("{}, bounce slot {} ({} bytes of pinned memory)",
                      where(c), slot, staging.slot_bytes));
    }
  }
  for (size_t c = 0; c < comms.size(); ++c) {
    auto& free = comms[c].free_slots;
    free.clear();
    for (int i = per_comm; i-- > 0;)
      free.push_back(static_cast<int>(c) * per_comm + i);
    comms[c].unstaging.reserve(
        static_cast<size_t>(per_comm)); // one slot each at least
  }
  spdlog::info("plugin {} lacks NCCL_PTR_CUDA: the {} channel to {} stages "
               "CUDA memory "
               "through {} pinned bounce slots of {} bytes",
               net->name(), dir_name(), options.peer, total,
               staging.slot_bytes);
}

void channel_state::deregister_staging() {
  if (staging.mhandles.empty())
    return;
  auto& table = net->net();
  const size_t per_comm = static_cast<size_t>(options.staging_slots);
  for (size_t slot = 0; slot < staging.mhandles.size(); ++slot) {
    if (!staging.mhandles[slot])
      continue;
    size_t c = slot / per_comm;
    if (auto rc = table.deregMr(comms[c].comm, staging.mhandles[slot]);
        rc != ncclSuccess)
      spdlog::warn("plugin {}: deregMr({}, bounce slot {}) failed: {}",
                   net->name(), where(c), slot, result_name(rc));
  }
  staging.mhandles.clear();
}

// Waits for copies still in flight, then frees the bounce memory.
void channel_state::free_staging() noexcept {
  if (!staging.copier)
    return;
  staging.copier->wait_all();
  if (staging.memory)
    staging.copier->free_host(staging.memory);
  staging.memory = nullptr;
  staging.copier.reset();
}

std::string channel_state::staging_failure(size_t c, const char* what,
                                           const std::exception& e) const {
  return fmt::format("{}, comm {}: {}: {}", staging_context(), c, what,
                     e.what());
}

int channel_state::staged_buffers(const chunk& ch) {
  int count = 0;
  for (int k = 0; k < ch.n; ++k)
    count += ch.user_data[k] != nullptr;
  return count;
}

// Gives the chunks at the head of comm c's FIFO their bounce slots, in
// posting order, and starts the device-to-host copies of staged sends. A
// chunk that finds too few free slots stops it: nothing overtakes it.
// False when the comm failed.
bool channel_state::prepare(size_t c) {
  auto& comm = comms[c];
  while (comm.prepared < comm.waiting.size()) {
    chunk& ch = comm.waiting.at(comm.prepared);
    if (ch.staged) {
      if (comm.free_slots.size() < static_cast<size_t>(staged_buffers(ch)))
        return true;
      for (int k = 0; k < ch.n; ++k)
        if (ch.user_data[k] && !take_slot(c, ch, k))
          return false;
    }
    ++comm.prepared;
  }
  return true;
}

bool channel_state::take_slot(size_t c, chunk& ch, int k) {
  auto& comm = comms[c];
  int slot = comm.free_slots.back();
  comm.free_slots.pop_back();
  ch.staged_slot[k] = slot;
  ch.data[k] = staging.slot_memory(slot);
  ch.mhandles[k] = staging.mhandles[static_cast<size_t>(slot)];
  if (dir == direction::recv || ch.sizes[k] == 0)
    return true;
  try {
    staging.copier->start(slot, ch.data[k], ch.user_data[k],
                          static_cast<size_t>(ch.sizes[k]));
  } catch (const std::exception& e) {
    // Skipping this chunk would shift the peer's matching: the comm fails.
    fail_comm(c, staging_failure(c, "device-to-host copy of a send", e));
    return false;
  }
  ch.copying |= 1u << k;
  return true;
}

// Polls the copies of `ch` still in flight; true once none is left. A
// failed copy throws (the caller decides what fails).
bool channel_state::copies_done(chunk& ch) {
  for (int k = 0; k < ch.n; ++k)
    if ((ch.copying & (1u << k)) && staging.copier->done(ch.staged_slot[k]))
      ch.copying &= ~(1u << k);
  return ch.copying == 0;
}

void channel_state::release_slots(size_t c, chunk& ch) {
  for (int k = 0; k < ch.n; ++k)
    if (ch.staged_slot[k] >= 0) {
      comms[c].free_slots.push_back(ch.staged_slot[k]);
      ch.staged_slot[k] = -1;
    }
}

// A staged receive landed in its bounce slots: copy each buffer to the
// caller's memory; the chunk finishes once the copies did.
void channel_state::start_unstaging(size_t c, chunk& ch) {
  for (int k = 0; k < ch.n; ++k) {
    if (ch.staged_slot[k] < 0 || ch.sizes[k] <= 0)
      continue;
    try {
      staging.copier->start(ch.staged_slot[k], ch.user_data[k], ch.data[k],
                            static_cast<size_t>(ch.sizes[k]));
      ch.copying |= 1u << k;
    } catch (const std::exception& e) {
      fail_op(ch.op, staging_failure(c, "host-to-device copy of a receive", e));
    }
  }
  if (ch.copying) {
    comms[c].unstaging.push_back(ch);
  } else {
    release_slots(c, ch);
    finish_chunk(c, ch, ch.received);
  }
}

void channel_state::finish_unstaged(size_t c) {
  auto& list = comms[c].unstaging;
  for (size_t i = 0; i < list.size();) {
    chunk& ch = list[i];
    try {
      if (!copies_done(ch)) {
        ++i;
        continue;
      }
    } catch (const std::exception& e) {
      fail_op(ch.op, staging_failure(c, "host-to-device copy of a receive", e));
      ch.copying = 0; // a failed copy is over; CUDA errors are sticky anyway
    }
    release_slots(c, ch);
    finish_chunk(c, ch, ch.received);
    list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

} // namespace kvferry::transport::detail
