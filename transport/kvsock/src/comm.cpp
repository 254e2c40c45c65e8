// Shared comm machinery: request pool, fatal errors, destinations, closing.
#include "comm.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cuda.hpp"
#include "log.hpp"

namespace kvsock {

ncclResult_t errno_result(int err) {
  switch (err) {
  case ECONNRESET:
  case EPIPE:
  case ECONNABORTED:
  case ETIMEDOUT:
  case EHOSTUNREACH:
  case ENETUNREACH:
    return ncclRemoteError;
  default:
    return ncclSystemError;
  }
}

int Destination::iovecs(size_t offset, size_t len, iovec* iov, int max,
                        size_t* covered) const {
  if (!scattered) {
    iov[0].iov_base = base + offset;
    iov[0].iov_len = len;
    *covered = len;
    return 1;
  }
  int count = 0;
  size_t done = 0;
  while (done < len && count < max) {
    size_t position = offset + done;
    size_t page = position / kUnpackPage;
    size_t in_page = position % kUnpackPage;
    size_t take = std::min(len - done, kUnpackPage - in_page);
    iov[count].iov_base = base + scatter_page(page) * kUnpackPage + in_page;
    iov[count].iov_len = take;
    ++count;
    done += take;
  }
  *covered = done;
  return count;
}

void Destination::copy_in(size_t offset, const char* src, size_t len) const {
  if (discard || len == 0)
    return;
  if (!scattered) {
    std::memcpy(base + offset, src, len);
    return;
  }
  iovec iov[64];
  while (len > 0) {
    size_t covered = 0;
    int count = iovecs(offset, len, iov, 64, &covered);
    for (int i = 0; i < count; ++i) {
      std::memcpy(iov[i].iov_base, src, iov[i].iov_len);
      src += iov[i].iov_len;
    }
    offset += covered;
    len -= covered;
  }
}

CommBase::~CommBase() = default;

void CommBase::init_pool(int count, int msgs_per_request) {
  request_count = count;
  requests.reset(new Request[count]);
  messages.reset(new Message[static_cast<size_t>(count) * msgs_per_request]);
  free_requests.reserve(count);
  for (int i = count - 1; i >= 0; --i) {
    requests[i].comm = this;
    requests[i].msgs = &messages[static_cast<size_t>(i) * msgs_per_request];
    free_requests.push_back(i);
  }
}

Request* CommBase::acquire_request() {
  if (free_requests.empty())
    return nullptr;
  Request* request = &requests[free_requests.back()];
  free_requests.pop_back();
  request->in_use = true;
  request->n = 0;
  request->matched = 0;
  request->unpack_slot = -1;
  request->awaiting_consume = false;
  request->error.store(ncclSuccess);
  return request;
}

void CommBase::release_request(Request* request) {
  request->in_use = false;
  free_requests.push_back(static_cast<int>(request - requests.get()));
}

void CommBase::fail(ncclResult_t code, const char* fmt, ...) {
  char text[400];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  int expected = ncclSuccess;
  if (error.compare_exchange_strong(expected, code)) {
    KVSOCK_WARN("%s comm with %s failed: %s", sender ? "send" : "recv",
                peer.c_str(), text);
    shutdown_sockets();
  }
}

void CommBase::shutdown_sockets() {
  if (ctrl_fd >= 0)
    shutdown(ctrl_fd, SHUT_RDWR);
  for (auto& lane : lanes)
    shutdown(lane->fd(), SHUT_RDWR);
}

namespace {
void signal(int wake_fd) {
  uint64_t one = 1;
  ssize_t n = ::write(wake_fd, &one, sizeof one);
  (void)n; // EAGAIN only when the counter is already non-zero: a wakeup is
           // pending anyway
}
} // namespace

// The order that loses no news: a lane ends its piece, then signals; a
// test() drains the signal, then looks at the pieces. A signal drained
// before its piece was seen is impossible; one that lands after the test
// saw its piece leaves the descriptor readable once for nothing (allowed:
// "may find news").
void CommBase::signal_wait_fd() {
  if (!signal_always.load(std::memory_order_acquire) || wake_fd < 0)
    return;
  signal(wake_fd);
  // After the write: a test() that sees the flag drains what it says.
  wake_pending.store(true, std::memory_order_release);
}

void CommBase::note_progress() {
  progress.fetch_add(1, std::memory_order_release);
  if (!signal_always.load(std::memory_order_acquire) &&
      sleeping.load(std::memory_order_acquire) && wake_fd >= 0)
    signal(wake_fd);
}

bool CommBase::open_wait_fd() {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) {
    KVSOCK_WARN("comm with %s: epoll_create1 failed: %s", peer.c_str(),
                strerror(errno));
    return false;
  }
  auto watch = [&](int watched, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = watched;
    return watched < 0 || epoll_ctl(fd, EPOLL_CTL_ADD, watched, &ev) == 0;
  };
  if (!watch(wake_fd, EPOLLIN) || (!sender && !watch(ctrl_fd, EPOLLIN))) {
    KVSOCK_WARN("comm with %s: epoll_ctl failed: %s", peer.c_str(),
                strerror(errno));
    ::close(fd);
    return false;
  }
  wait_fd = fd;
  signal_always.store(true, std::memory_order_release);
  watch_tx();
  return true;
}

void CommBase::drain_wait_fd() {
  if (wake_pending.exchange(false, std::memory_order_acq_rel)) {
    uint64_t drained;
    ssize_t n = ::read(wake_fd, &drained, sizeof drained);
    (void)n; // EAGAIN: drained by an idle_wait already
  }
}

void CommBase::watch_tx() {
  if (!sender)
    return;
  // A send comm's socket is writable nearly always: watched only while
  // control bytes wait for room, or the descriptor would never go quiet.
  bool want = static_cast<SendComm*>(this)->tx_count > 0;
  if (want == wait_watches_tx || ctrl_fd < 0)
    return;
  epoll_event ev{};
  ev.events = EPOLLOUT;
  ev.data.fd = ctrl_fd;
  if (epoll_ctl(wait_fd, want ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, ctrl_fd, &ev) ==
      0)
    wait_watches_tx = want;
}

bool CommBase::start_lanes(const std::vector<int>& fds) {
  wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd < 0) {
    KVSOCK_WARN("comm with %s: eventfd failed: %s", peer.c_str(),
                strerror(errno));
    return false;
  }
  for (size_t i = 0; i < fds.size(); ++i) {
    lanes.push_back(std::make_unique<Lane>(this, fds[i], static_cast<int>(i)));
  }
  for (auto& lane : lanes) {
    if (!lane->start())
      return false;
  }
  return true;
}

void CommBase::close_all() {
  // Shutting the sockets first wakes lane threads blocked in send/recv.
  shutdown_sockets();
  for (auto& lane : lanes)
    lane->stop();
  lanes.clear();
  if (ctrl_fd >= 0) {
    ::close(ctrl_fd);
    ctrl_fd = -1;
  }
  if (wait_fd >= 0) {
    ::close(wait_fd);
    wait_fd = -1;
  }
  if (wake_fd >= 0) {
    ::close(wake_fd);
    wake_fd = -1;
  }
  if (!regions.empty()) {
    KVSOCK_INFO("closing comm with %s: freeing %zu memory registrations never "
                "deregistered",
                peer.c_str(), regions.size());
  }
  for (Region* region : regions)
    delete region;
  regions.clear();
}

size_t CommBase::drop_allowance(size_t len) const {
  if (config.fault_drop_after < 0)
    return len;
  int64_t left = config.fault_drop_after - payload_sent.load();
  if (left <= 0)
    return 0;
  return std::min(len, static_cast<size_t>(left));
}

void CommBase::account_sent(size_t len) {
  if (config.fault_drop_after < 0)
    return;
  int64_t total = payload_sent.fetch_add(static_cast<int64_t>(len)) +
                  static_cast<int64_t>(len);
  if (total >= config.fault_drop_after) {
    fail(ncclSystemError,
         "fault injection: KVSOCK_FAULT_DROP_AFTER=%lld closed the connection",
         static_cast<long long>(config.fault_drop_after));
  }
}

} // namespace kvsock
