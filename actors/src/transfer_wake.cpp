// See transfer_wake.hpp.
#include "transfer_wake.hpp"

#include <cerrno>
#include <cstdint>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <system_error>
#include <unistd.h>

#include <caf/all.hpp>

#include "kvferry/actors/actors.hpp"
#include "kvferry/runtime/stage_stamps.hpp"

namespace kvferry::transfer_detail {

namespace {

[[noreturn]] void fail(const char* call) {
  throw std::system_error(errno, std::generic_category(),
                          std::string{"transfer wake watch: "} + call);
}

} // namespace

wake_watch::wake_watch(caf::actor_addr target) : target_(std::move(target)) {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0)
    fail("epoll_create1");
  stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = stop_fd_;
  if (stop_fd_ < 0 || epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev) != 0) {
    auto saved = errno;
    if (stop_fd_ >= 0)
      ::close(stop_fd_);
    ::close(epoll_fd_);
    errno = saved;
    fail("eventfd");
  }
  thread_ = std::thread([this] { run(); });
}

wake_watch::~wake_watch() {
  std::uint64_t one = 1;
  ssize_t n = ::write(stop_fd_, &one, sizeof one);
  (void)n; // cannot fail: the counter is 0 until now
  thread_.join();
  ::close(stop_fd_);
  ::close(epoll_fd_);
}

bool wake_watch::arm(int fd) noexcept {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.fd = fd;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev) == 0)
    return true;
  return errno == ENOENT && epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
}

void wake_watch::run() {
  epoll_event events[16];
  for (;;) {
    int n = epoll_wait(epoll_fd_, events, 16, -1);
    if (n < 0 && errno == EINTR)
      continue;
    bool wake = false;
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == stop_fd_)
        return;
      wake = true;
    }
    if (!wake)
      continue;
    stage_stamps::stamp(stage_stamps::wake_fired);
    // One message for however many comms had news: the actor polls them all.
    auto target = caf::actor_cast<caf::actor>(target_);
    if (!target)
      return; // the actor is gone; its destructor joins us
    caf::anon_send(target, proto::wake_atom::value);
  }
}

} // namespace kvferry::transfer_detail
