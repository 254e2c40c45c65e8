// The sending end: headers and small payloads on the control socket from the
// caller's thread, large payloads split across the data sockets.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sys/socket.h>

#include "comm.hpp"
#include "log.hpp"
#include "socket.hpp"

namespace kvsock {
namespace {
constexpr int kMaxBatchIov = 64; // iovecs in one control-socket writev
} // namespace

ncclResult_t SendComm::post(Request* request, const char* data, int size,
                            int tag, const Region* region) {
  Message& msg = request->msgs[0];
  request->n = 1;
  request->seq = next_seq++;
  ++sends_posted;
  size_t bytes = static_cast<size_t>(size);
  int nlanes = static_cast<int>(lanes.size());

  msg.size = bytes;
  msg.src = data;
  msg.src_device = region != nullptr ? region->device : -1;
  msg.ctrl_sent = 0;
  msg.not_before_ns =
      config.fault_delay_us > 0 ? now_ns() + config.fault_delay_us * 1000 : 0;
  msg.corrupt_at = (config.fault_corrupt == sends_posted && bytes > 0)
                       ? static_cast<int64_t>(bytes / 2)
                       : -1;
  if (msg.corrupt_at >= 0) {
    KVSOCK_INFO("fault injection: flipping byte %lld of send #%lld to %s",
                static_cast<long long>(msg.corrupt_at),
                static_cast<long long>(sends_posted), peer.c_str());
  }

  // Device memory always goes through the data sockets, whose threads stage
  // it through pinned host memory; host messages up to inline_max go inline.
  bool inline_payload =
      msg.src_device < 0 ? bytes <= config.inline_max : bytes == 0;
  int parts = 0;
  size_t part_size = 0;
  if (!inline_payload) {
    size_t wanted = (bytes + config.min_part - 1) / config.min_part;
    parts = static_cast<int>(
        std::clamp<size_t>(wanted, 1, static_cast<size_t>(nlanes)));
    part_size = (bytes + parts - 1) / parts;
    parts = static_cast<int>((bytes + part_size - 1) / part_size);
  }
  msg.header = MessageHeader{kHeaderMagic,
                             tag,
                             static_cast<uint32_t>(bytes),
                             static_cast<uint32_t>(request->seq),
                             static_cast<uint32_t>(part_size),
                             static_cast<uint16_t>(parts),
                             static_cast<uint16_t>(next_lane)};
  msg.ctrl_total = sizeof(MessageHeader) + (inline_payload ? bytes : 0);
  msg.parts_left.store(parts, std::memory_order_relaxed);
  for (int i = 0; i < parts; ++i) {
    size_t offset = static_cast<size_t>(i) * part_size;
    lanes[(next_lane + i) % nlanes]->push(
        LaneJob{request, &msg, offset, std::min(part_size, bytes - offset)});
  }
  if (nlanes > 0)
    next_lane = (next_lane + std::max(parts, 1)) % nlanes;

  tx[(tx_head + tx_count) % tx.size()] = &msg;
  ++tx_count;
  // An inline send's control bytes wait for the caller's next test() or a
  // full batch (KVSOCK_GATHER), so that a burst leaves in one gathered
  // sendmsg instead of one each: on loopback each call also runs the
  // receiving side's TCP stack, about 6.5 us a call on the 2-core dev
  // machine, and each ends in a short segment (kGatherMaxInline). v7 callers
  // test every request they post (NCCL's own socket plugin sends only from
  // test()). A larger send goes at once with what waits before it: with
  // every send deferred, the endpoint over kvsock lost 20-50 % at 1 MiB on an
  // H100 host (16 cores, data parts handed off).
  size_t gather_max = parts > 0 ? kGatherMaxWithParts : kGatherMaxInline;
  if (tx_count >= static_cast<size_t>(config.gather) || bytes > gather_max)
    pump();
  // A caller that sleeps on the wait descriptor (getWaitFd) must find it
  // readable while control bytes wait for its test(), deferred or left by a
  // full socket: one signal until the next test(), whose watch_tx then
  // watches the socket for room if bytes still wait.
  if (tx_count > 0 && !tx_signalled) {
    signal_wait_fd();
    tx_signalled = true;
  }
  return ncclSuccess;
}

// The control bytes of `msg` not yet written: the header, then the inline
// payload (a corrupted byte, when injected, comes from corrupt_byte).
int SendComm::ctrl_iovecs(Message& msg, iovec* iov, int max, size_t* bytes) {
  int count = 0;
  *bytes = 0;
  constexpr size_t kHeader = sizeof(MessageHeader);
  if (msg.ctrl_sent < kHeader) {
    iov[count++] = {reinterpret_cast<char*>(&msg.header) + msg.ctrl_sent,
                    kHeader - msg.ctrl_sent};
    *bytes += kHeader - msg.ctrl_sent;
  }
  size_t from = msg.ctrl_sent > kHeader ? msg.ctrl_sent - kHeader : 0;
  size_t to = msg.ctrl_total - kHeader;
  if (from < to)
    to = from + drop_allowance(to - from);
  if (from >= to || count + 3 > max)
    return count;
  char* src = const_cast<char*>(msg.src);
  if (msg.corrupt_at >= static_cast<int64_t>(from) &&
      msg.corrupt_at < static_cast<int64_t>(to)) {
    size_t at = static_cast<size_t>(msg.corrupt_at);
    corrupt_byte = static_cast<char>(src[at] ^ 0x5a);
    if (at > from)
      iov[count++] = {src + from, at - from};
    iov[count++] = {&corrupt_byte, 1};
    if (to > at + 1)
      iov[count++] = {src + at + 1, to - at - 1};
  } else {
    iov[count++] = {src + from, to - from};
  }
  *bytes += to - from;
  return count;
}

void SendComm::pump() {
  constexpr size_t kHeader = sizeof(MessageHeader);
  bool faults = config.fault_drop_after >= 0;
  while (tx_count > 0 && error.load() == ncclSuccess) {
    iovec iov[kMaxBatchIov];
    int count = 0;
    int msgs = 0;
    int64_t now = 0;
    for (; msgs < kMaxGather && msgs < static_cast<int>(tx_count); ++msgs) {
      Message& msg = *tx[(tx_head + msgs) % tx.size()];
      if (msg.not_before_ns > 0) {
        if (now == 0)
          now = now_ns();
        if (msg.not_before_ns > now)
          break; // KVSOCK_FAULT_DELAY_US: not yet
      }
      if (count + 4 > kMaxBatchIov)
        break;
      size_t bytes = 0;
      int added = ctrl_iovecs(msg, iov + count, kMaxBatchIov - count, &bytes);
      count += added;
      if (msg.ctrl_sent + bytes < msg.ctrl_total) { // limited by the drop fault
        ++msgs;
        break;
      }
    }
    if (count == 0) {
      if (faults && msgs > 0) {
        fail(ncclSystemError,
             "fault injection: KVSOCK_FAULT_DROP_AFTER=%lld closed the "
             "connection",
             static_cast<long long>(config.fault_drop_after));
      }
      return;
    }
    msghdr mh{};
    mh.msg_iov = iov;
    mh.msg_iovlen = static_cast<size_t>(count);
    ssize_t n = sendmsg(ctrl_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return;
      int err = errno;
      fail(errno_result(err), "writing to the control socket: %s",
           strerror(err));
      return;
    }
    size_t written = static_cast<size_t>(n);
    progress.fetch_add(1, std::memory_order_relaxed);
    size_t payload = 0;
    while (written > 0 && tx_count > 0) {
      Message& msg = *tx[tx_head];
      size_t take = std::min(written, msg.ctrl_total - msg.ctrl_sent);
      size_t header_left =
          msg.ctrl_sent < kHeader ? kHeader - msg.ctrl_sent : 0;
      payload += take > header_left ? take - header_left : 0;
      msg.ctrl_sent += take;
      written -= take;
      if (msg.ctrl_sent == msg.ctrl_total) {
        tx_head = (tx_head + 1) % tx.size();
        --tx_count;
      }
    }
    if (faults)
      account_sent(payload);
  }
}

} // namespace kvsock
