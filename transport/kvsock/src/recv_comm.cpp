// The receiving end: matching headers to posted receives in posting order,
// small payloads from the control socket, large ones from the data sockets.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <sys/socket.h>

#include <climits>

#include "comm.hpp"
#include "cuda.hpp"
#include "log.hpp"

namespace kvsock {
namespace {
// Bytes read past an inline payload in the same call (see read_inline_direct):
// enough for the next headers and small messages, little enough that large
// payloads are rarely copied through the receive buffer.
constexpr size_t kTrailingRead = 4096;
} // namespace

ncclResult_t RecvComm::post(Request* request, int n, void** data,
                            const int* sizes, const int* tags,
                            void** mhandles) {
  request->n = n;
  request->seq = next_seq++;
  for (int i = 0; i < n; ++i) {
    Message& msg = request->msgs[i];
    const Region* region =
        static_cast<const Region*>(mhandles != nullptr ? mhandles[i] : nullptr);
    msg.capacity = static_cast<size_t>(sizes[i]);
    msg.tag = tags != nullptr ? tags[i] : 0;
    msg.matched = false;
    msg.truncated = false;
    msg.size = 0;
    msg.inline_done = 0;
    msg.parts_left.store(0, std::memory_order_relaxed);
    msg.dest = Destination{};
    msg.dest.base = static_cast<char*>(data[i]);
    msg.dest.device = region != nullptr ? region->device : -1;
  }
  if (unpack) {
    int slot = static_cast<int>(request->seq % kUnpackSlots);
    unpack->slot_busy[slot] = true;
    request->unpack_slot = slot;
    Destination& dest = request->msgs[0].dest;
    dest = Destination{};
    dest.base =
        unpack->bounce + static_cast<size_t>(slot) * kUnpackMaxRecvBytes;
    dest.scattered = true;
  }
  match[(match_head + match_count) % match.size()] = request;
  ++match_count;
  // No pump here: test() will, and a recv that finds nothing is a wasted
  // system call on the latency path.
  if (peer_closed)
    on_peer_closed();
  return ncclSuccess;
}

void RecvComm::pump(bool may_block) {
  recv_flags = may_block ? 0 : MSG_DONTWAIT;
  while (error.load() == ncclSuccess) {
    if (inline_msg != nullptr) {
      Message& msg = *inline_msg;
      size_t left = msg.size - msg.inline_done;
      if (left == 0) {
        inline_msg = nullptr;
        inline_request = nullptr;
        // A message just completed: let test() report it rather than spend
        // a recv that most likely finds nothing (the next call will look).
        if (rx_end - rx_begin < sizeof(MessageHeader))
          return;
        continue;
      }
      if (rx_end > rx_begin) {
        if (!deliver_from_rx())
          return;
        continue;
      }
      bool direct = !msg.dest.discard && msg.dest.device < 0;
      if (!(direct ? read_inline_direct() : fill_rx()))
        return;
      continue;
    }
    if (rx_end - rx_begin < sizeof(MessageHeader)) {
      if (!fill_rx())
        return;
      continue;
    }
    if (!handle_header())
      return;
  }
}

bool RecvComm::deliver_from_rx() {
  Message& msg = *inline_msg;
  size_t take = std::min(msg.size - msg.inline_done, rx_end - rx_begin);
  const char* src = rx.data() + rx_begin;
  if (msg.dest.device >= 0 && !msg.dest.discard) {
    if (!cuda::copy_to_device(msg.dest.base + msg.inline_done, src, take,
                              msg.dest.device)) {
      fail(ncclUnhandledCudaError, "copying %zu received bytes to device %d",
           take, msg.dest.device);
      return false;
    }
  } else {
    msg.dest.copy_in(msg.inline_done, src, take);
  }
  msg.inline_done += take;
  rx_begin += take;
  return true;
}

// A control-socket read that returned no bytes (n <= 0): the peer closed, a
// real error failed the comm, or nothing is there yet. Always false, so the
// caller stops pumping.
bool RecvComm::on_failed_ctrl_read(ssize_t n) {
  if (n == 0) {
    on_peer_closed();
    return false;
  }
  if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    int err = errno;
    fail(errno_result(err), "reading the control socket: %s", strerror(err));
  }
  return false;
}

// The rest of an inline payload straight into its destination, and in the
// same recvmsg a little more into the (empty) receive buffer: the next
// header, often a whole small message, without a second system call.
bool RecvComm::read_inline_direct() {
  Message& msg = *inline_msg;
  iovec iov[IOV_MAX];
  size_t left = msg.size - msg.inline_done;
  size_t covered = 0;
  int count =
      msg.dest.iovecs(msg.inline_done, left, iov, IOV_MAX - 1, &covered);
  rx_begin = rx_end = 0;
  if (covered == left)
    iov[count++] = {rx.data(), std::min(rx.size(), kTrailingRead)};
  msghdr mh{};
  mh.msg_iov = iov;
  mh.msg_iovlen = static_cast<size_t>(count);
  ssize_t n = recvmsg(ctrl_fd, &mh, recv_flags);
  recv_flags = MSG_DONTWAIT; // only the first read of a pump may wait
  if (n > 0) {
    size_t payload = std::min(static_cast<size_t>(n), covered);
    msg.inline_done += payload;
    rx_end = static_cast<size_t>(n) - payload;
    progress.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return on_failed_ctrl_read(n);
}

bool RecvComm::fill_rx() {
  if (rx_begin > 0) {
    std::memmove(rx.data(), rx.data() + rx_begin, rx_end - rx_begin);
    rx_end -= rx_begin;
    rx_begin = 0;
  }
  if (rx_end == rx.size())
    return false;
  ssize_t n = recv(ctrl_fd, rx.data() + rx_end, rx.size() - rx_end, recv_flags);
  recv_flags = MSG_DONTWAIT; // only the first read of a pump may wait
  if (n > 0) {
    rx_end += static_cast<size_t>(n);
    progress.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return on_failed_ctrl_read(n);
}

// Matches the header at the front of the receive buffer to the head grouped
// receive. Returns false when it must wait (no receive posted) or failed.
bool RecvComm::handle_header() {
  MessageHeader header;
  std::memcpy(&header, rx.data() + rx_begin, sizeof header);
  if (header.magic != kHeaderMagic) {
    fail(ncclRemoteError,
         "protocol error: bad message header on the control socket (magic %#x)",
         header.magic);
    return false;
  }
  size_t nlanes = lanes.size();
  if (header.parts > 0 &&
      (header.parts > nlanes || header.first_lane >= nlanes ||
       header.part_size == 0 ||
       static_cast<uint64_t>(header.parts - 1) * header.part_size >=
           header.size ||
       static_cast<uint64_t>(header.parts) * header.part_size < header.size)) {
    fail(ncclRemoteError,
         "protocol error: send #%u splits %u bytes into %u parts of %u",
         header.seq, header.size, header.parts, header.part_size);
    return false;
  }
  if (match_count == 0)
    return false; // the next receive is not posted yet
  Request* request = match[match_head];
  Message* msg = nullptr;
  for (int i = 0; i < request->n && msg == nullptr; ++i) {
    Message& candidate = request->msgs[i];
    if (!candidate.matched && (request->n == 1 || candidate.tag == header.tag))
      msg = &candidate;
  }
  if (msg == nullptr) {
    fail(ncclInvalidUsage,
         "send #%u has tag %d, which no free buffer of the head grouped "
         "receive (n=%d) has",
         header.seq, header.tag, request->n);
    return false;
  }
  rx_begin += sizeof header;
  msg->matched = true;
  msg->size = header.size;
  if (header.size > msg->capacity) {
    KVSOCK_WARN("message truncated: %s sent %u bytes (send #%u, tag %d) to a "
                "%zu-byte receive buffer; "
                "the bytes are dropped and the receive fails",
                peer.c_str(), header.size, header.seq, header.tag,
                msg->capacity);
    msg->truncated = true;
    msg->dest.discard = true;
  }
  if (request->unpack_slot >= 0 && !msg->truncated) {
    ncclNetUnpackRecord* records = unpack->meta->records[request->unpack_slot];
    size_t slot_base =
        static_cast<size_t>(request->unpack_slot) * kUnpackMaxRecvBytes;
    for (size_t page = 0; page * kUnpackPage < header.size; ++page) {
      size_t offset = page * kUnpackPage;
      records[page].src_off =
          static_cast<uint32_t>(slot_base + scatter_page(page) * kUnpackPage);
      records[page].len =
          static_cast<uint32_t>(std::min(kUnpackPage, header.size - offset));
      records[page].dst_off = offset;
    }
  }
  if (++request->matched == request->n) {
    match_head = (match_head + 1) % match.size();
    --match_count;
  }
  if (header.parts == 0) {
    inline_msg = msg;
    inline_request = request;
    return true;
  }
  msg->inline_done =
      header.size; // nothing comes inline: the lanes bring it all
  msg->parts_left.store(header.parts, std::memory_order_relaxed);
  for (uint32_t i = 0; i < header.parts; ++i) {
    size_t offset = static_cast<size_t>(i) * header.part_size;
    size_t len = std::min<size_t>(header.part_size, header.size - offset);
    lanes[(header.first_lane + i) % nlanes]->push(
        LaneJob{request, msg, offset, len});
  }
  return true;
}

// The peer closed the control socket. Receives already matched finish from
// what the data sockets still hold; the others can never match and fail now.
void RecvComm::on_peer_closed() {
  if (!peer_closed) {
    peer_closed = true;
    if (inline_msg != nullptr) {
      fail(ncclRemoteError,
           "peer closed the connection in the middle of a %zu-byte message",
           inline_msg->size);
    } else if (rx_end > rx_begin) {
      fail(ncclRemoteError,
           "peer closed the connection in the middle of a message header");
    } else if (match_count > 0) {
      KVSOCK_WARN("recv comm with %s: peer closed the connection; %zu posted "
                  "receives fail",
                  peer.c_str(), match_count);
    }
  }
  while (match_count > 0) {
    Request* request = match[match_head];
    int expected = ncclSuccess;
    request->error.compare_exchange_strong(expected, ncclRemoteError);
    match_head = (match_head + 1) % match.size();
    --match_count;
  }
}

void RecvComm::publish_unpack(Request* request) {
  const Message& msg = request->msgs[0];
  int slot = request->unpack_slot;
  unpack->meta->count[slot] =
      msg.truncated ? 0 : (msg.size + kUnpackPage - 1) / kUnpackPage;
  std::atomic_thread_fence(std::memory_order_release);
  unpack->handle->head = request->seq + 1;
}

} // namespace kvsock
