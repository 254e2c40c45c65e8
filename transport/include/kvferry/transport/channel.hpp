// A C++ wrapper over a loaded v7 plugin: channels of comms, registrations,
// and a completion-based post/poll API with no allocation per operation in
// steady state.
//
// A *channel* is N comm pairs (channel_options::comms) between two peers,
// one direction: a send_channel on one side, a recv_channel on the other.
// Receiving side                          Sending side
//   channel_listener l(net, dev, opts);
//   send l.handles() to the peer  ----->  channel_connector c(net, dev,
//   handles, opts); auto rx = l.accept(10s);              auto tx =
//   c.connect(10s); auto mr = rx.register_memory(p, n);   auto mr =
//   tx.register_memory(q, n); auto id = rx.post_recv(p, n, mr);     auto id =
//   tx.post_send(q, n, mr); rx.poll([](const completion& c){..}); tx.poll(...);
// Moving the handles between the peers is the caller's job (out of band).
//
// Matching rule (the plugin's, lifted to channels): the k-th operation posted
// on a send_channel matches the k-th posted on the peer's recv_channel. Each
// operation is cut into chunks of at most chunk_bytes (and never above
// 2^31-1, the v7 limit), and chunk number c of the channel's whole history
// goes to comm c mod N. Both sides must therefore use the same comms and
// chunk_bytes, and post operations of the same sizes in the same order; a
// receive may be larger than its send only when both fit in one chunk.
//
// Several devices (NICs): a listener or connector given a list of plugin
// devices puts comm k on devices[k mod n], so chunk c of a transfer goes to
// comm c mod N and so to device (c mod N) mod n: with N a multiple of n every
// device carries an equal share of the bytes. The two sides choose their
// devices independently (each its own NICs); all devices of one channel must
// agree on ptrSupport's CUDA bit and on HOST/UNPACK.
//
// Posting never blocks: a chunk the plugin can't take now (a NULL request,
// or max_inflight requests already out on that comm) waits in the comm's FIFO
// and is posted from poll(). Memory bounds per comm: max_inflight plugin
// requests plus a FIFO of waiting chunks that grows only when the caller
// posts faster than the plugin drains (then it stays at its high-water mark).
//
// CUDA memory on a plugin without NCCL_PTR_CUDA in its ptrSupport is
// *staged*: register_memory(p, n, NCCL_PTR_CUDA) then registers nothing with
// the plugin; the channel instead owns a ring of pinned host bounce slots
// (staging_slots per comm, chunk_bytes each, allocated and registered as host
// memory once per channel, at its first staged registration). A staged send
// chunk is copied device-to-host into a free slot and posted from there once
// the copy completed; a staged receive chunk lands in a slot and is copied
// host-to-device before its operation is reported. Posting order on every
// comm stays the caller's: a chunk that finds no free slot waits at the head
// of its comm's FIFO and everything behind it waits too. Callers see no
// difference except registration::staged() and the extra latency of a copy.
// A failed device-to-host copy fails its comm (the peer's matching would
// break if the chunk were skipped); a failed host-to-device copy fails its
// receive only. UNPACK receivers are never staged (their kernel writes the
// destination).
//
// Threading: a channel and its registrations belong to one thread at a time
// (the transfer actor's). Errors: a failing plugin call throws plugin_error
// from post_* or fails the affected operations through their completion (the
// comm is then marked failed and every operation waiting on it fails too).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "kvferry/transport/plugin.hpp"
#include "kvferry/transport/staging.hpp"

namespace kvferry::transport {

using op_id = uint64_t;

struct channel_options {
  int comms = 1; // comm pairs striped, same on both sides
  size_t chunk_bytes =
      size_t{4} << 20; // split size, same on both sides; <= max_chunk_bytes
  int max_inflight = NCCL_NET_MAX_REQUESTS; // plugin requests out per comm
  size_t initial_ops = 256;  // op table size before it has to grow
  std::string peer = "peer"; // named in every error message
  // Staging (plugins without NCCL_PTR_CUDA): bounce slots per comm, each
  // chunk_bytes, so the pinned memory of a channel is at most
  // comms x staging_slots x chunk_bytes (16 MiB by default). 0 refuses to
  // stage: CUDA registrations on such a plugin then fail.
  int staging_slots = 4;
  // Makes the copier of a staging channel; empty means the CUDA copier
  // (make_cuda_staging_copier). Tests pass make_host_staging_copier.
  staging_copier_factory staging_copier;
  // The caller polls the channel from a loop with an idle policy of its
  // own and must not sleep inside the plugin (the transfer actor: messages
  // to it would wait): each comm is told so through the plugin's extension
  // (net_ext.h, setCallerPolls) where it has one. Off: the plugin's default
  // (kvsock sleeps in an idle test(), as NCCL's proxy thread expects).
  bool caller_polls = false;
};
constexpr int max_staging_slots = 64;
// Largest chunk: registrations above 2^31-1 bytes are made of overlapping
// 1 GiB windows every 512 MiB, so any chunk of <= 512 MiB fits in one window.
constexpr size_t max_chunk_bytes = size_t{512} << 20;

struct completion {
  op_id id = 0;
  bool ok = true;
  size_t bytes = 0;            // bytes sent, or bytes really received
  const char* error = nullptr; // set when !ok; valid during the callback only
};

namespace detail {
struct channel_state;
using completion_fn = void (*)(void* context, const completion& done);
} // namespace detail

// A buffer registered (regMr) on every comm of one channel. Move-only;
// deregMr runs on destruction. Destroy registrations before their channel: a
// channel that goes first deregisters what is left (with a warning) and the
// registration becomes inert.
class registration {
public:
  registration() = default;
  registration(registration&&) noexcept;
  registration& operator=(registration&&) noexcept;
  registration(const registration&) = delete;
  registration& operator=(const registration&) = delete;
  ~registration();

  bool valid() const noexcept { return slot_ >= 0 && !state_.expired(); }
  void* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  int type() const noexcept { return type_; }
  // True for CUDA memory the plugin can't take: it travels through the
  // channel's pinned bounce slots (nothing was registered with the plugin).
  bool staged() const noexcept { return staged_; }

private:
  friend struct detail::channel_state;
  std::weak_ptr<detail::channel_state> state_;
  int slot_ = -1;
  void* data_ = nullptr;
  size_t size_ = 0;
  int type_ = NCCL_PTR_HOST;
  bool staged_ = false;
  void reset() noexcept;
};

// What send_channel and recv_channel share.
class channel {
public:
  channel(channel&&) noexcept;
  channel& operator=(channel&&) noexcept;
  ~channel(); // deregisters what is left, then closes every comm

  // regMr on every comm. `type` is NCCL_PTR_HOST or NCCL_PTR_CUDA; CUDA
  // memory on a plugin without NCCL_PTR_CUDA is staged (see above).
  registration register_memory(void* data, size_t bytes,
                               int type = NCCL_PTR_HOST);
  // True when CUDA registrations on this channel are staged.
  bool stages_cuda() const noexcept;
  // Pinned bounce memory this channel holds (0 until a staged registration).
  size_t staging_bytes() const noexcept;

  // Posts what waits, tests what is out, and calls on_done(const completion&)
  // once per finished operation. Returns how many finished. Never blocks.
  template<class F>
  size_t poll(F&& on_done) {
    using fn_type = std::remove_reference_t<F>;
    return poll_raw(
        [](void* context, const completion& done) {
          (*static_cast<fn_type*>(context))(done);
        },
        &on_done);
  }
  size_t poll_raw(detail::completion_fn on_done, void* context);

  size_t in_flight() const noexcept; // operations posted and not yet reported
  // With options().caller_polls and a plugin that offers them (net_ext.h,
  // getWaitFd): one descriptor per comm, readable when poll() may find
  // news; empty otherwise. Owned by the comms: valid while the channel is.
  const std::vector<int>& wait_fds() const noexcept;
  int comm_count() const noexcept;
  const channel_options& options() const noexcept;
  const std::shared_ptr<plugin>& net() const noexcept;

protected:
  explicit channel(std::shared_ptr<detail::channel_state> state);
  std::shared_ptr<detail::channel_state> state_;
};

class send_channel : public channel {
public:
  // `bytes` may be anything (0 too); above chunk_bytes it is split.
  op_id post_send(const void* data, size_t bytes, const registration& mr,
                  int tag = 0);

  // Up to maxRecvs sends on ONE comm, matching one post_recv_group of the
  // peer (tags choose the buffer). Each buffer <= chunk_bytes. One completion.
  struct send_buffer {
    const void* data;
    size_t bytes;
    int tag;
    const registration* mr;
  };
  op_id post_send_group(const send_buffer* buffers, int count);

private:
  friend class channel_connector;
  using channel::channel;
};

class recv_channel : public channel {
public:
  // `capacity` may exceed the peer's send within one chunk; the completion
  // reports the bytes really received.
  op_id post_recv(void* data, size_t capacity, const registration& mr,
                  int tag = 0);

  // One grouped irecv of `count` (<= maxRecvs) buffers on one comm.
  struct recv_buffer {
    void* data;
    size_t capacity;
    int tag;
    const registration* mr;
  };
  op_id post_recv_group(const recv_buffer* buffers, int count);

  // UNPACK plugins: the device handle accept() filled in for comm `comm`
  // (nullptr for HOST plugins). The GPU unpack kernel consumes it.
  ncclNetDeviceHandle_v7_t* device_handle(int comm = 0) const noexcept;
  // UNPACK plugins: tell the plugin the receiver's kernel consumed the bounce
  // pages of a completed receive. A no-op for HOST plugins. For UNPACK the
  // wrapper keeps the plugin's requests of a finished receive until this call.
  void irecv_consumed(op_id id);

private:
  friend class channel_listener;
  using channel::channel;
};

// The receiving side's setup: one listen per comm.
class channel_listener {
public:
  // Comm k listens on devices[k mod devices.size()].
  channel_listener(std::shared_ptr<plugin> net, std::vector<int> devices,
                   channel_options options = {});
  channel_listener(std::shared_ptr<plugin> net, int dev,
                   channel_options options = {});
  ~channel_listener(); // closes listen comms (and any accepted comm not taken)
  channel_listener(channel_listener&&) noexcept;
  channel_listener(const channel_listener&) = delete;

  // One 128-byte handle per comm, for the peer's channel_connector.
  const std::vector<net_handle>& handles() const noexcept;
  // One non-blocking round of accept calls; true once every comm is accepted.
  bool try_accept();
  recv_channel take(); // after try_accept() returned true
  // try_accept until done or the deadline; throws timeout_error naming the
  // peer.
  recv_channel accept(std::chrono::milliseconds timeout);

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// The sending side's setup: one connect per peer handle.
class channel_connector {
public:
  // Comm k connects from devices[k mod devices.size()].
  channel_connector(std::shared_ptr<plugin> net, std::vector<int> devices,
                    std::vector<net_handle> peer_handles,
                    channel_options options = {});
  channel_connector(std::shared_ptr<plugin> net, int dev,
                    std::vector<net_handle> peer_handles,
                    channel_options options = {});
  ~channel_connector();
  channel_connector(channel_connector&&) noexcept;
  channel_connector(const channel_connector&) = delete;

  bool try_connect();
  send_channel take();
  send_channel connect(std::chrono::milliseconds timeout);

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace kvferry::transport
