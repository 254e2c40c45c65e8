// Knobs of the workers' GPU scheduling, read from the environment so that
// one device run can compare settings side by side (the demo's worker
// processes inherit it). The defaults are the settings measured best; see
// docs/gpu.md, "Contention in the demo". Plain C++: kv_pattern.cu includes it.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <stdexcept>
#include <string>

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
/// a copy running at the same time; unset or empty: `fallback`. Throws
/// std::invalid_argument naming the variable for anything but 1..fallback.
inline unsigned pattern_fill_grid(unsigned fallback) {
  const char* text = std::getenv("KVFERRY_FILL_GRID");
  if (text == nullptr || *text == '\0')
    return fallback;
  char* end = nullptr;
  const unsigned long blocks = std::strtoul(text, &end, 10);
  if (*end != '\0' || blocks == 0 || blocks > fallback)
    throw std::invalid_argument("KVFERRY_FILL_GRID=" + std::string{text} +
                                ": expected a number of thread blocks, 1 to " +
                                std::to_string(fallback));
  return static_cast<unsigned>(blocks);
}

/// KVFERRY_PATTERN_WORKERS=N (1..16) sets how many pattern workers (fill
/// and check, each with its own stream) an app actor over GPU memory has;
/// unset or empty: `fallback`. Throws std::invalid_argument naming the
/// variable for anything else.
inline unsigned pattern_workers_on_gpu(unsigned fallback) {
  const char* text = std::getenv("KVFERRY_PATTERN_WORKERS");
  if (text == nullptr || *text == '\0')
    return fallback;
  char* end = nullptr;
  const unsigned long workers = std::strtoul(text, &end, 10);
  if (*end != '\0' || workers == 0 || workers > 16)
    throw std::invalid_argument("KVFERRY_PATTERN_WORKERS=" + std::string{text} +
                                ": expected 1 to 16 pattern workers");
  return static_cast<unsigned>(workers);
}

/// How many threads pack a large CUDA IPC plan (gpu_copy_engine::
/// set_plan_threads: 16,384 extents or more, e.g. one vector call over
/// 4 KiB KV blocks): KVFERRY_PLAN_THREADS=N (1..64); unset or empty: a
/// quarter of this machine's cores, 1 to 4 (one thread on a 2-core host,
/// four on a 16-core GPU host). Throws std::invalid_argument naming the
/// variable for anything else.
inline std::size_t plan_threads(unsigned cores) {
  const char* text = std::getenv("KVFERRY_PLAN_THREADS");
  if (text == nullptr || *text == '\0')
    return cores / 4 < 1 ? 1 : cores / 4 > 4 ? 4 : cores / 4;
  char* end = nullptr;
  const unsigned long threads = std::strtoul(text, &end, 10);
  if (*end != '\0' || threads == 0 || threads > 64)
    throw std::invalid_argument("KVFERRY_PLAN_THREADS=" + std::string{text} +
                                ": expected a number of threads, 1 to 64");
  return threads;
}

} // namespace kvferry::detail
