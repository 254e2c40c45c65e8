// Memory that transfers read and write: device memory (cudaMalloc), pinned
// host memory (cudaHostAlloc) or plain host memory, behind one small type, and
// CUDA IPC (export a region's handle; open a peer's handle once and cache it).
// KV blocks are carved out of a region by the actors' block_pool (plan.hpp).
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

#include "kvferry/transport/memory_kind.hpp"

namespace kvferry::transport {

/// Thrown by GPU memory and copy calls; the message names the CUDA call, the
/// device and CUDA's own error string.
class gpu_error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

/// A non-owning view: what the transfer actor passes around and registers
/// with plugins (kind cuda → NCCL_PTR_CUDA, host → NCCL_PTR_HOST).
struct memory_view {
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

  /// cudaMalloc on `gpu`: one big allocation (a whole KV block pool).
  static gpu_region allocate_device(int gpu, std::size_t bytes);
  /// cudaHostAlloc (portable, mapped): host memory any GPU can DMA.
  static gpu_region allocate_pinned_host(std::size_t bytes);
  /// Page-aligned ordinary host memory (no CUDA needed).
  static gpu_region allocate_host(std::size_t bytes);

  const memory_view& view() const { return region_; }
  std::byte* data() const { return region_.base; }
  std::size_t size() const { return region_.bytes; }
  memory_kind kind() const { return region_.kind; }
  int device() const { return region_.device; }
  explicit operator bool() const { return region_.base != nullptr; }

private:
  void release() noexcept;
  memory_view region_{};
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

/// One region of a region table exported over CUDA IPC. cudaIpcGetMemHandle
/// names an allocation, and a region may lie inside a larger one (the
/// caller's memory wrapped in place, e.g. a segment of PyTorch's caching
/// allocator): the handle is its allocation's, the region starts `offset`
/// bytes into it.
struct ipc_region {
  ipc_handle handle;        // handle.region_bytes: the allocation's size
  std::uint64_t offset = 0; // region start - allocation base
  std::uint64_t bytes = 0;  // the region's size
  // The allocation's base in the exporting process (export_ipc_region; not
  // in the text form): regions of one allocation share its handle.
  std::uint64_t allocation = 0;
};

/// Exports device memory [view.base, view.base + view.bytes): finds the
/// allocation holding it (cuPointerGetAttributes, cuMemGetAddressRange) and
/// gets that allocation's handle. Throws gpu_error saying why the memory
/// cannot be exported: host memory, managed memory, memory that legacy CUDA
/// IPC cannot share (cuMemCreate / VMM, e.g. PyTorch's expandable segments,
/// or cudaMallocAsync pools), or a range that leaves its allocation.
ipc_region export_ipc_region(const memory_view& view);

/// The text form of an exported region table (proto::endpoint::ipc_handle):
/// one entry per region, separated by ','; an entry is the allocation's
/// ipc_handle::to_hex(), followed by "@<offset>+<bytes>" unless the region
/// is its whole allocation, so a one-region pool's text is the single
/// handle it always was.
std::string ipc_table_to_text(const std::vector<ipc_region>& table);
/// Parses ipc_table_to_text(); throws std::invalid_argument naming the
/// entry at fault (and a region that leaves its allocation).
std::vector<ipc_region> ipc_table_from_text(const std::string& text);

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
  memory_view open(const ipc_handle& handle);
  /// Closes one mapping early (e.g. the peer left); no-op if not open.
  void close(const ipc_handle& handle);
  std::size_t open_count() const;

private:
  int local_gpu_;
  mutable std::mutex mutex_;
  std::map<ipc_handle, memory_view> opened_;
};

/// Throws gpu_error("<what>: built without CUDA") in non-CUDA builds; used by
/// GPU entry points so callers see one clear reason.
[[noreturn]] void throw_no_cuda(const char* what);

} // namespace kvferry::transport
