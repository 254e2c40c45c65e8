// Memory that transfers read and write: device memory (cudaMalloc), pinned
// host memory (cudaHostAlloc) or plain host memory, behind one small type, plus
// KV block pools carved out of one region and CUDA IPC (export a region's
// handle; open a peer's handle once and cache it).
//
// Compiles without CUDA: then only host regions can be made, and every GPU
// call throws gpu_error saying the build has no CUDA.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvferry::transport {

/// Thrown by GPU memory and copy calls; the message names the CUDA call, the
/// device and CUDA's own error string.
class gpu_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

enum class memory_kind { host, cuda };

/// A non-owning view: what the transfer actor passes around and registers
/// with plugins (kind cuda → NCCL_PTR_CUDA, host → NCCL_PTR_HOST).
struct memory_region {
  memory_kind kind = memory_kind::host;
  int device = -1; // CUDA device for kind cuda; -1 for host
  std::byte* base = nullptr;
  std::size_t bytes = 0;
  bool pinned = false; // host memory the GPU can DMA (cudaHostAlloc)
};

/// Owns one allocation, freed with the call that made it. Move-only.
class gpu_region {
public:
  gpu_region() = default;
  ~gpu_region();
  gpu_region(gpu_region&& other) noexcept;
  gpu_region& operator=(gpu_region&& other) noexcept;
  gpu_region(const gpu_region&) = delete;
  gpu_region& operator=(const gpu_region&) = delete;

  /// cudaMalloc on `gpu`: one big allocation (carve it with kv_block_pool).
  static gpu_region allocate_device(int gpu, std::size_t bytes);
  /// cudaHostAlloc (portable, mapped): host memory any GPU can DMA.
  static gpu_region allocate_pinned_host(std::size_t bytes);
  /// Page-aligned ordinary host memory (no CUDA needed).
  static gpu_region allocate_host(std::size_t bytes);

  const memory_region& view() const { return region_; }
  std::byte* data() const { return region_.base; }
  std::size_t size() const { return region_.bytes; }
  memory_kind kind() const { return region_.kind; }
  int device() const { return region_.device; }
  explicit operator bool() const { return region_.base != nullptr; }

private:
  void release() noexcept;
  memory_region region_{};
};

/// Fixed-size blocks carved from one region; a free list of block ids.
/// Acquiring and releasing never allocates after construction.
class kv_block_pool {
public:
  /// Takes the region; `block_bytes` must divide into it at least once and be
  /// a multiple of 16 (the copy kernel's vector width).
  kv_block_pool(gpu_region region, std::size_t block_bytes);

  std::optional<std::uint32_t> acquire();
  /// Throws std::invalid_argument for an id that is out of range or free.
  void release(std::uint32_t block);
  std::size_t block_bytes() const { return block_bytes_; }
  std::uint32_t block_count() const {
    return static_cast<std::uint32_t>(in_use_.size());
  }
  std::uint32_t free_count() const {
    return static_cast<std::uint32_t>(free_.size());
  }
  std::uint64_t offset_of(std::uint32_t block) const {
    return std::uint64_t{block} * block_bytes_;
  }
  std::byte* address_of(std::uint32_t block) const {
    return region_.data() + offset_of(block);
  }
  const memory_region& region() const { return region_.view(); }

private:
  gpu_region region_;
  std::size_t block_bytes_;
  std::vector<std::uint32_t> free_;
  std::vector<bool> in_use_;
};

/// A CUDA IPC handle plus what a peer needs to use it: serialisable to a
/// hex string for directory metadata.
struct ipc_handle {
  std::array<std::uint8_t, 64> bytes{}; // cudaIpcMemHandle_t
  std::uint64_t region_bytes = 0;
  int device = -1; // exporter's device ordinal (same host)
  std::string to_hex() const;
  /// Throws std::invalid_argument naming what is wrong with `text`.
  static ipc_handle from_hex(const std::string& text);
  friend bool operator<(const ipc_handle& a, const ipc_handle& b) {
    return a.bytes < b.bytes;
  }
};

/// cudaIpcGetMemHandle for a device region (whole allocation).
ipc_handle export_ipc_handle(const gpu_region& region);

/// Opens peers' IPC handles once each (cudaIpcOpenMemHandle is expensive and
/// may only be opened once per process) and closes them all at destruction.
/// Thread-safe. Bound: one entry per distinct peer region ever opened.
class ipc_region_cache {
public:
  explicit ipc_region_cache(int local_gpu);
  ~ipc_region_cache();
  ipc_region_cache(const ipc_region_cache&) = delete;
  ipc_region_cache& operator=(const ipc_region_cache&) = delete;

  /// The peer region mapped into this process (kind cuda, on the exporter's
  /// device). Throws gpu_error naming the handle's device on failure.
  memory_region open(const ipc_handle& handle);
  /// Closes one mapping early (e.g. the peer left); no-op if not open.
  void close(const ipc_handle& handle);
  std::size_t open_count() const;

private:
  int local_gpu_;
  mutable std::mutex mutex_;
  std::map<ipc_handle, memory_region> opened_;
};

/// Throws gpu_error("<what>: built without CUDA") in non-CUDA builds; used by
/// GPU entry points so callers see one clear reason.
[[noreturn]] void throw_no_cuda(const char* what);

} // namespace kvferry::transport
