// Knobs of the workers' GPU scheduling, read from the environment so that
// one device run can compare settings side by side (the demo's worker
// processes inherit it). The defaults are the settings measured best; see
// docs/gpu.md, "Contention in the demo". Plain C++: kv_pattern.cu includes it.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <string>

#include "kvferry/transport/env_count.hpp"

namespace kvferry::detail {

/// KVFERRY_GPU_STREAM_PRIORITIES=1 gives the transfer actor's copy engine
/// the device's highest stream priority; otherwise it keeps CUDA's default
/// (the priority brought the demo nothing, docs/gpu.md). The pattern
/// fill/check stream has the lowest priority, which is also CUDA's default,
/// either way.
inline bool gpu_stream_priorities() {
  const char* text = std::getenv("KVFERRY_GPU_STREAM_PRIORITIES");
  return text != nullptr && std::string{text} == "1";
}

/// The transfer actor's progress loop keeps polling without backing off
/// while one of its CUDA IPC copies is in flight: a kernel ends within
/// microseconds to milliseconds, and a back-off delay (up to 200 us, meant
/// for a quiet plugin) would be added to a copy that waited for the GPU.
/// KVFERRY_IPC_SPIN=0 backs off after 256 idle polls as before.
inline bool ipc_spin_while_copying() {
  const char* text = std::getenv("KVFERRY_IPC_SPIN");
  return text == nullptr || std::string{text} != "0";
}

/// KVFERRY_FILL_GRID=N caps the pattern fill kernel at N thread blocks (one
/// block writes one KV block at a time), leaving SMs and memory bandwidth to
/// a copy running at the same time; unset or empty: `fallback`, also the
/// largest value allowed.
inline unsigned pattern_fill_grid(unsigned fallback) {
  return static_cast<unsigned>(transport::env_count(
      "KVFERRY_FILL_GRID", fallback, fallback, "thread blocks"));
}

/// KVFERRY_PATTERN_WORKERS=N (1..16) sets how many pattern workers (fill
/// and check, each with its own stream) an app actor over GPU memory has;
/// unset or empty: `fallback`.
inline unsigned pattern_workers_on_gpu(unsigned fallback) {
  return static_cast<unsigned>(transport::env_count(
      "KVFERRY_PATTERN_WORKERS", fallback, 16, "pattern workers"));
}

} // namespace kvferry::detail
