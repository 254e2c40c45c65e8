// CUDA events that order a copy after the caller's own GPU work without
// blocking a host thread (issue #15, "wait on the GPU, not the host"): a
// serving stack records an event on its model's stream when layer l is
// written and hands it to kvferry, whose copy stream waits for it
// (gpu_copy_engine::wait_event) or whose transfer actor polls it before it
// posts a plugin send (gpu_event_done).
//
// An event is passed around as std::uint64_t (a cudaEvent_t cast), which
// means something only inside the process that made or opened it. Between
// processes of one host an event made with cudaEventInterprocess travels as
// text (export_ipc_event) and is opened once per process (ipc_event_cache).
// Without CUDA every call throws gpu_error saying so.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "kvferry/transport/gpu_memory.hpp"

namespace kvferry::transport {

/// cudaEventQuery: true once the work before the event has finished, false
/// while it has not; throws gpu_error when the event or the work failed.
bool gpu_event_done(std::uint64_t event);

/// The text of an interprocess event's handle (cudaIpcGetEventHandle; the
/// event needs cudaEventInterprocess | cudaEventDisableTiming), in
/// ipc_handle's form with `device` the event's GPU and size 0.
std::string export_ipc_event(std::uint64_t event, int device);

/// Opens other processes' interprocess events once each and keeps them
/// (cudaIpcOpenEventHandle), destroying them at destruction. Thread-safe.
/// Bound: one entry per distinct event ever opened (a stack exports one per
/// layer slot and reuses it).
class ipc_event_cache {
public:
  ipc_event_cache() = default;
  ~ipc_event_cache();
  ipc_event_cache(const ipc_event_cache&) = delete;
  ipc_event_cache& operator=(const ipc_event_cache&) = delete;

  /// The event behind export_ipc_event()'s text, usable in this process.
  /// Throws std::invalid_argument on malformed text, gpu_error when CUDA
  /// cannot open it.
  std::uint64_t open(const std::string& text);
  std::size_t open_count() const;

private:
  mutable std::mutex mutex_;
  std::map<ipc_handle, std::uint64_t> opened_;
};

} // namespace kvferry::transport
