// test(): drive the comm, then report a request's completion or failure.
#include <poll.h>
#include <sched.h>
#include <unistd.h>

#include "comm.hpp"
#include "log.hpp"
#include "socket.hpp"

namespace kvsock {
namespace {

bool message_complete(const Message& msg, bool sender) {
  if (msg.parts_left.load(std::memory_order_acquire) != 0)
    return false;
  return sender ? msg.ctrl_sent == msg.ctrl_total
                : msg.matched && msg.inline_done == msg.size;
}

// A matched message whose bytes are still read or written by lane threads.
bool lanes_busy(const Request& request) {
  for (int i = 0; i < request.n; ++i) {
    if (request.msgs[i].parts_left.load(std::memory_order_relaxed) != 0)
      return true;
  }
  return false;
}

ncclResult_t test_send(SendComm& comm, Request* request, int* done,
                       int* sizes) {
  comm.tx_signalled = false; // this test drained it (test_request)
  comm.pump();
  Message& msg = request->msgs[0];
  if (message_complete(msg, true)) {
    // A lane that failed still counts its piece as finished: the request
    // is over, but it did not succeed.
    if (int err = request->error.load(); err != ncclSuccess) {
      comm.release_request(request);
      return static_cast<ncclResult_t>(err);
    }
    *done = 1;
    if (sizes != nullptr)
      sizes[0] = static_cast<int>(msg.size);
    comm.release_request(request);
    return ncclSuccess;
  }
  int err = request->error.load();
  if (err == ncclSuccess)
    err = comm.error.load();
  // Report a failure only once no lane thread still reads the buffer, so the
  // caller may free it as soon as test() returns (the failed comm's sockets
  // are shut down, so the lanes let go promptly).
  if (err != ncclSuccess && !lanes_busy(*request)) {
    comm.release_request(request);
    return static_cast<ncclResult_t>(err);
  }
  return ncclSuccess;
}

ncclResult_t test_recv(RecvComm& comm, Request* request, int* done, int* sizes,
                       bool may_block) {
  if (request->awaiting_consume) { // UNPACK: tested again before irecvConsumed
    *done = 1;
    if (sizes != nullptr)
      sizes[0] = static_cast<int>(request->msgs[0].size);
    return ncclSuccess;
  }
  comm.pump(may_block);
  bool complete = request->matched == request->n;
  bool truncated = false;
  for (int i = 0; i < request->n && complete; ++i) {
    complete = message_complete(request->msgs[i], false);
    truncated = truncated || request->msgs[i].truncated;
  }
  if (!complete) {
    int err = request->error.load();
    if (err == ncclSuccess)
      err = comm.error.load();
    // As for sends: fail only once no lane thread writes into the buffer.
    if (err != ncclSuccess && !lanes_busy(*request)) {
      if (request->unpack_slot >= 0)
        comm.unpack->slot_busy[request->unpack_slot] = false;
      comm.release_request(request);
      return static_cast<ncclResult_t>(err);
    }
    return ncclSuccess;
  }
  *done = 1;
  if (sizes != nullptr) {
    for (int i = 0; i < request->n; ++i)
      sizes[i] = static_cast<int>(request->msgs[i].size);
  }
  int err = request->error.load();
  if (truncated || err != ncclSuccess) {
    if (request->unpack_slot >= 0)
      comm.unpack->slot_busy[request->unpack_slot] = false;
    comm.release_request(request);
    return truncated ? ncclInternalError : static_cast<ncclResult_t>(err);
  }
  if (request->unpack_slot >= 0) {
    comm.publish_unpack(request);
    request->awaiting_consume = true; // released by irecvConsumed
    return ncclSuccess;
  }
  comm.release_request(request);
  return ncclSuccess;
}

} // namespace

namespace {

// True when the receive still needs bytes from the control socket (its
// header, or its inline payload), so a blocking read there is the right wait.
bool needs_control_bytes(RecvComm& comm, const Request& request) {
  return !request.awaiting_consume &&
         (request.matched < request.n || comm.inline_request == &request);
}

// One finished idle period of `sample_ns`. Spinning that caught the news in
// time resets the average (spinning works here); anything else moves it.
void record_idle(CommBase& comm, int64_t sample_ns, bool slept,
                 int64_t spin_ns) {
  if (!slept && sample_ns <= spin_ns)
    comm.idle_avg_ns = sample_ns;
  else
    comm.idle_avg_ns += (sample_ns - comm.idle_avg_ns) / 8;
  ++comm.idle_periods;
}

} // namespace

ncclResult_t test_request(Request* request, int* done, int* sizes,
                          WaitHint* hint) {
  *done = 0;
  CommBase* comm = request->comm;
  std::lock_guard<std::mutex> lock(comm->mu);
  // Idle handling. Spinning pays only when news usually comes within the
  // spin window (a quiet machine, a fast peer); when idle periods are longer
  // (a loaded machine, a transfer waiting on its lanes) every spin is CPU
  // taken from the transfer, so the comm sleeps at once: a receive waiting
  // for the control socket blocks in recv (one system call, as a blocking
  // TCP reader would), anything else in ppoll (see idle_wait). Every 16th
  // idle period spins anyway, so a comm notices when spinning pays again.
  int64_t spin_ns = static_cast<int64_t>(comm->config.spin_us) * 1000;
  // Hysteresis: start sleeping when idle periods average over 2x the spin
  // window, go back to spinning below 1x (blocking reads measure a little
  // long: they include the wakeup).
  if (comm->idle_avg_ns > 2 * spin_ns)
    comm->idle_sleepy = true;
  else if (comm->idle_avg_ns <= spin_ns)
    comm->idle_sleepy = false;
  bool sleepy = comm->config.wait_us > 0 && comm->idle_sleepy &&
                comm->idle_periods % 16 != 0;
  bool block = sleepy && !comm->sender &&
               needs_control_bytes(*static_cast<RecvComm*>(comm), *request);
  int64_t before = now_ns();
  if (comm->wait_fd >= 0)
    comm->drain_wait_fd();
  ncclResult_t result = comm->sender ? test_send(*static_cast<SendComm*>(comm),
                                                 request, done, sizes)
                                     : test_recv(*static_cast<RecvComm*>(comm),
                                                 request, done, sizes, block);
  if (comm->wait_fd >= 0)
    comm->watch_tx();
  int64_t now = now_ns();
  uint64_t progress = comm->progress.load(std::memory_order_acquire);
  if (progress != comm->seen_progress.load(std::memory_order_relaxed)) {
    // News: the idle period (if any) is over.
    if (block)
      record_idle(*comm, now - before, true, spin_ns);
    else if (comm->idle_since_ns != 0)
      record_idle(*comm, now - comm->idle_since_ns, comm->idle_slept, spin_ns);
    comm->seen_progress.store(progress, std::memory_order_relaxed);
    comm->idle_since_ns = 0;
  }
  if (result != ncclSuccess || *done || comm->config.wait_us == 0)
    return result;
  if (comm->idle_since_ns == 0) {
    comm->idle_since_ns = before;
    comm->idle_slept = false;
  }
  if (block) { // waited already (the recv timed out or brought too little)
    comm->idle_slept = true;
    return result;
  }
  if (!sleepy && now - comm->idle_since_ns < spin_ns)
    return result;
  comm->idle_slept = true;
  hint->wait = true;
  hint->comm = comm;
  if (comm->sender) {
    auto* send = static_cast<SendComm*>(comm);
    if (send->tx_count > 0) {
      hint->ctrl_fd = comm->ctrl_fd;
      hint->ctrl_events = POLLOUT;
    }
  } else {
    hint->ctrl_fd = comm->ctrl_fd;
    hint->ctrl_events = POLLIN;
  }
  return result;
}

bool idle_wait(const WaitHint& hint) {
  // Within the spin window return at once: sched_yield() looks tempting but
  // on a loaded machine it hands the CPU away for a whole time slice.
  if (!hint.wait)
    return false;
  bool news = true;
  CommBase* comm = hint.comm;
  comm->sleeping.store(true, std::memory_order_seq_cst);
  // A lane that finished between our check and `sleeping` did not signal:
  // look at the counter again before sleeping.
  if (comm->progress.load(std::memory_order_seq_cst) ==
      comm->seen_progress.load(std::memory_order_relaxed)) {
    pollfd fds[2] = {{hint.ctrl_fd, hint.ctrl_events, 0},
                     {comm->wake_fd, POLLIN, 0}};
    timespec timeout{0, static_cast<long>(comm->config.wait_us) * 1000};
    news = ppoll(fds, 2, &timeout, nullptr) > 0;
    if ((fds[1].revents & POLLIN) != 0) {
      uint64_t drained;
      ssize_t n = ::read(comm->wake_fd, &drained, sizeof drained);
      (void)n;
    }
  }
  comm->sleeping.store(false, std::memory_order_relaxed);
  return news;
}

} // namespace kvsock
