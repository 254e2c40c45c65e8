// The transfer actor's sleep on the plugin's wait descriptors (net_ext.h,
// getWaitFd): a thread that waits in epoll for the comms whose requests the
// actor left armed, and wakes the actor with one message when one turns
// readable. The actor's own thread cannot wait on a descriptor: it waits
// for its mailbox, which must stay free to take messages.
#pragma once

#include <memory>
#include <thread>

#include <caf/actor_addr.hpp>

namespace kvferry::transfer_detail {

class wake_watch {
public:
  // Starts the thread; throws std::system_error when epoll or eventfd fail.
  explicit wake_watch(caf::actor_addr target);
  // Stops the thread and joins it; detaches it instead where the thread
  // itself destroys the watch (its handle to the actor was the last one,
  // so the actor's state goes on that thread).
  ~wake_watch();
  wake_watch(const wake_watch&) = delete;
  wake_watch& operator=(const wake_watch&) = delete;

  // The next time `fd` is readable (at once if it is now), the target gets
  // one wake_atom; then `fd` is quiet until armed again (EPOLLONESHOT). A
  // closed descriptor leaves the set by itself. False when epoll refuses
  // `fd` (the caller polls instead).
  bool arm(int fd) noexcept;

private:
  struct core; // the descriptors and the target: the thread shares them
  static void run(const std::shared_ptr<core>& c);

  std::shared_ptr<core> core_;
  std::thread thread_;
};

} // namespace kvferry::transfer_detail
