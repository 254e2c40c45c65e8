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

// Owned by the watch and its thread together, so that the thread may
// outlive the watch (see ~wake_watch): the last owner closes the
// descriptors.
struct wake_watch::core {
  caf::actor_addr target;
  int epoll_fd = -1;
  int stop_fd = -1;
  ~core() {
    for (int fd : {stop_fd, epoll_fd})
      if (fd >= 0)
        ::close(fd);
  }
};

namespace {

[[noreturn]] void fail(const char* call) {
  throw std::system_error(errno, std::generic_category(),
                          std::string{"transfer wake watch: "} + call);
}

} // namespace

// Until the stop descriptor fires: one wake_atom per epoll_wait that saw
// news, however many comms had it (the actor polls them all).
void wake_watch::run(const std::shared_ptr<core>& c) {
  epoll_event events[16];
  for (;;) {
    int n = epoll_wait(c->epoll_fd, events, 16, -1);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return; // cannot happen with a valid set; stop rather than spin
    bool wake = false;
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == c->stop_fd)
        return;
      wake = true;
    }
    if (!wake)
      continue;
    stage_stamps::stamp(stage_stamps::wake_fired);
    if (auto target = caf::actor_cast<caf::actor>(c->target))
      caf::anon_send(target, proto::wake_atom::value);
    else
      return; // the actor is gone
  }
}

wake_watch::wake_watch(caf::actor_addr target)
    : core_(std::make_shared<core>()) {
  core_->target = std::move(target);
  core_->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (core_->epoll_fd < 0)
    fail("epoll_create1");
  core_->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (core_->stop_fd < 0)
    fail("eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = core_->stop_fd;
  if (epoll_ctl(core_->epoll_fd, EPOLL_CTL_ADD, core_->stop_fd, &ev) != 0)
    fail("epoll_ctl");
  thread_ = std::thread([c = core_] { run(c); });
}

wake_watch::~wake_watch() {
  std::uint64_t one = 1;
  ssize_t n = ::write(core_->stop_fd, &one, sizeof one);
  (void)n; // cannot fail: the counter is 0 until now
  if (thread_.get_id() == std::this_thread::get_id())
    thread_.detach(); // it returns at its next epoll_wait, owning the core
  else
    thread_.join();
}

bool wake_watch::arm(int fd) noexcept {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLONESHOT;
  ev.data.fd = fd;
  if (epoll_ctl(core_->epoll_fd, EPOLL_CTL_MOD, fd, &ev) == 0)
    return true;
  return errno == ENOENT &&
         epoll_ctl(core_->epoll_fd, EPOLL_CTL_ADD, fd, &ev) == 0;
}

} // namespace kvferry::transfer_detail
