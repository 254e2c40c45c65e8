// kvferry::endpoint: the point-to-point engine surface (docs/engine-api.md),
// for programs that speak the shape of UCCL's P2P Endpoint or NIXL's agent
// and do not want actors. A small control layer over one transfer actor: the
// bytes move exactly as everywhere else in kvferry (its region table; CUDA
// IPC between same-host GPU endpoints of two processes, else the loaded v7
// plugin, kvsock by default). No CAF type appears here.
//
//   auto ep = kvferry::endpoint::create({});            // host memory
//   auto conn = ep->connect(peer_metadata);              // or ep->accept(10s)
//   auto region = ep->reg(buffer, bytes);
//   auto id = ep->write(*conn, {{*region, 0, n}}, {peer_descriptor});
//   auto bytes = ep->wait(*id, std::chrono::seconds(10));
//
// Every call returns a status or a result<T> (runtime/status.hpp) and never
// throws. Thread-safe: any thread may call anything; completions are seen
// by poll/wait from any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvferry/runtime/status.hpp"

namespace kvferry {

/// A read-only view of contiguous elements (std::span's shape, C++17).
template<class T>
class items {
public:
  items() = default;
  items(const T* data, std::size_t size) : data_(data), size_(size) {}
  items(const std::vector<T>& v) : data_(v.data()), size_(v.size()) {}
  // For arguments written in place ({{region, 0, n}}): the list lives until
  // the call returns, which is as long as an `items` argument is used.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winit-list-lifetime"
#endif
  items(std::initializer_list<T> list)
      : data_(list.begin()), size_(list.size()) {
  }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
  template<std::size_t N>
  items(const std::array<T, N>& a) : data_(a.data()), size_(N) {
  }
  items(const T& one) : data_(&one), size_(1) {
  }
  const T* begin() const {
    return data_;
  }
  const T* end() const {
    return data_ + size_;
  }
  const T& operator[](std::size_t i) const {
    return data_[i];
  }
  std::size_t size() const {
    return size_;
  }
  bool empty() const {
    return size_ == 0;
  }

private:
  const T* data_ = nullptr;
  std::size_t size_ = 0;
};

using conn_id = std::uint64_t;
using region_id = std::uint64_t;
using xfer_id = std::uint64_t;

/// Bytes [offset, offset + size) of a local region.
struct slice {
  region_id region = 0;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
};

/// A peer's region range, as advertise() describes it: carried to the
/// other side out of band (or in a notification) as descriptor_bytes bytes.
struct descriptor {
  static constexpr std::size_t wire_bytes = 48;
  std::uint64_t owner = 0; // the advertising endpoint's instance
  region_id region = 0;
  std::uint64_t region_bytes = 0; // the region's size when advertised
  std::uint64_t offset = 0;
  std::uint64_t size = 0;

  std::array<std::uint8_t, wire_bytes> to_bytes() const;
  /// A descriptor from its wire form; the status names the byte or field
  /// at fault.
  static result<descriptor> parse(const std::uint8_t* bytes, std::size_t size);
  /// The sub-range [offset, offset + size) of this one (relative to it);
  /// invalid_argument when it does not lie inside.
  result<descriptor> sub(std::uint64_t offset, std::uint64_t size) const;
};

/// What a peer needs to connect: parsed from the opaque blob metadata()
/// returns.
struct endpoint_metadata {
  static constexpr std::uint16_t version = 1;
  std::string name; // the endpoint's (and its transfer actor's) name
  std::uint64_t instance = 0;
  std::string address; // where its control port listens
  std::uint16_t port = 0;
  std::int32_t gpu = -1; // its device, -1: host memory
  std::string plugin;    // its v7 plugin
  std::string host_id;   // same-host detection

  std::vector<std::uint8_t> to_bytes() const;
  /// The status names the byte offset and field at fault.
  static result<endpoint_metadata> parse(const std::uint8_t* bytes,
                                         std::size_t size);
};

/// How a transfer's bytes moved: the loaded plugin, or CUDA IPC (same-host
/// endpoints whose regions are all GPU memory IPC can share: the initiator's
/// own copy kernel writes or reads the peer's memory, mapped once).
enum class transfer_path : std::uint8_t { plugin = 0, cuda_ipc = 1 };

/// "plugin" or "cuda_ipc".
const char* to_string(transfer_path path);

/// Transfers done since create(), and their bytes, per path.
struct endpoint_stats {
  std::uint64_t plugin_transfers = 0;
  std::uint64_t plugin_bytes = 0;
  std::uint64_t ipc_transfers = 0;
  std::uint64_t ipc_bytes = 0;
};

/// A small message from a peer (notify()), in arrival order per connection.
struct notification {
  conn_id conn = 0;
  std::vector<std::uint8_t> bytes;
};

struct endpoint_options {
  /// CUDA device whose memory reg() takes by default; -1: host memory.
  int gpu = -1;
  /// v7 plugin name or path; empty: kvsock (the default plugin search).
  std::string plugin;
  /// The control port's address (also what metadata() advertises) and port
  /// (0: any free one). Plain TCP unless tls_dir is set.
  std::string address = "127.0.0.1";
  std::uint16_t port = 0;
  /// Unique per process pair; empty: "ep-<hostname>-<pid>-<n>".
  std::string name;
  /// A transfer (or a posted receive) not done by then fails with timeout.
  std::chrono::milliseconds transfer_timeout{30000};
  std::chrono::milliseconds connect_timeout{10000};
  /// Mutual TLS on the control port, as `kvferry worker` has it
  /// (docs/security.md): a TLS dir made by `kvferry pki init DIR NAME...`
  /// holding ca.crt and tls_name's certificate and key; peers must present
  /// a certificate of the same CA. Empty: plain TCP (docs/engine-api.md).
  std::string tls_dir;
  /// The certificate presented (tls_dir/NAME.crt, .key); empty: `name`.
  std::string tls_name;
  /// Scheduler threads of the endpoint's actor system (they run its control
  /// actor and its transfer actor); 0: one per core. One by default: the two
  /// actors hand each transfer to each other and nobody sleeps. Two, where
  /// cores are to spare, let them work at once: faster with many plugin
  /// transfers in flight, slower one at a time (docs/engine-api.md,
  /// "Threading").
  std::size_t threads = 1;
};

class endpoint {
public:
  /// Largest notification payload, in bytes.
  static constexpr std::size_t max_notification_bytes = 64 * 1024;

  /// Starts an actor system, loads the plugin, spawns the transfer actor and
  /// publishes the control port. Errors: plugin_error, cuda_error,
  /// unreachable (the port), invalid_argument.
  static result<endpoint> create(const endpoint_options& options);

  endpoint(endpoint&&) noexcept;
  endpoint& operator=(endpoint&&) noexcept;
  /// Stops everything (transfers in flight fail); waits at most ~1 s.
  ~endpoint();

  /// The opaque, versioned blob a peer passes to connect().
  std::vector<std::uint8_t> metadata() const;
  /// This endpoint's metadata, parsed.
  const endpoint_metadata& info() const;

  /// Connects to the endpoint behind `metadata` (both directions usable).
  result<conn_id> connect(items<std::uint8_t> metadata);
  /// The next connection a peer made (oldest first), waiting up to
  /// `timeout`. Errors: timeout.
  result<conn_id> accept(std::chrono::milliseconds timeout);

  /// Registers [ptr, ptr + size) in place (the caller keeps it alive until
  /// dereg): memory of CUDA device `gpu`, -1 host memory. Without `gpu`:
  /// the endpoint's own device.
  result<region_id> reg(void* ptr, std::size_t size);
  result<region_id> reg(void* ptr, std::size_t size, int gpu);
  /// Unregisters; transfers on the region must have completed.
  status dereg(region_id region);

  /// A descriptor of [offset, offset + size) of a local region.
  result<descriptor> advertise(region_id region, std::uint64_t offset,
                               std::uint64_t size) const;

  /// One-sided: local[i] is written into remote[i] (equal sizes) of the
  /// peer. Done once every byte landed in the peer's memory.
  result<xfer_id> write(conn_id conn, items<slice> local,
                        items<descriptor> remote);
  /// One-sided: remote[i] of the peer is read into local[i] (equal sizes).
  result<xfer_id> read(conn_id conn, items<slice> local,
                       items<descriptor> remote);
  /// Two-sided: the k-th send on a connection fills the peer's k-th recv on
  /// it, in order, local slices concatenated; at most as many bytes as the
  /// receive has room for. A send is done once its bytes landed in the
  /// peer's receive (its receipt), so the endpoint may be destroyed then.
  result<xfer_id> send(conn_id conn, items<slice> local);
  result<xfer_id> recv(conn_id conn, items<slice> local);

  /// The bytes a done transfer moved (a recv: what arrived), nullopt while
  /// it is pending, or its error. Once a result other than pending was
  /// returned (here or by wait) the id is forgotten (then: not_found).
  result<std::optional<std::uint64_t>> poll(xfer_id id);
  /// The bytes once done, or the transfer's error; timeout (the transfer
  /// stays pending, wait again) when `timeout` passes first.
  result<std::uint64_t> wait(xfer_id id, std::chrono::milliseconds timeout);

  /// The path a transfer takes, once chosen (nullopt before: a send waiting
  /// for the peer's receive), while its id is known (not_found after its
  /// outcome was reported). A recv reports the path the peer's send takes.
  result<std::optional<transfer_path>> path(xfer_id id) const;
  /// Per-path counters of the transfers done so far.
  endpoint_stats stats() const;

  /// A small message to the peer, after everything this thread's earlier
  /// completed transfers on `conn` wrote (at most max_notification_bytes).
  status notify(conn_id conn, items<std::uint8_t> bytes);
  /// Every notification received so far (and forgets them).
  std::vector<notification> take_notifications();

  struct impl;

private:
  explicit endpoint(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace kvferry
