// Data sockets: one thread each, blocking I/O of the pieces of large messages.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>

#include "comm.hpp"
#include "cuda.hpp"
#include "log.hpp"
#include "socket.hpp"

namespace kvsock {

Lane::Lane(CommBase* comm, int fd, int index)
    : comm_(comm), fd_(fd), index_(index),
      ring_(comm->sender ? kSendRequests : kRecvRequests * kMaxRecvs) {
}

Lane::~Lane() {
  stop();
  if (fd_ >= 0)
    ::close(fd_);
  if (staging_ != nullptr)
    cuda::free_pinned(staging_);
}

bool Lane::start() {
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::exception& e) {
    KVSOCK_WARN("cannot start the thread of data socket %d to %s: %s", index_,
                comm_->peer.c_str(), e.what());
    return false;
  }
  return true;
}

void Lane::push(const LaneJob& job) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Cannot overflow: the ring holds as many pieces as the comm has messages.
    ring_[(head_ + count_) % ring_.size()] = job;
    ++count_;
  }
  cv_.notify_one();
}

void Lane::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_one();
  if (fd_ >= 0)
    shutdown(fd_, SHUT_RDWR);
  if (thread_.joinable())
    thread_.join();
}

bool Lane::wait_until(int64_t deadline_ns) {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    int64_t left = deadline_ns - now_ns();
    if (left <= 0)
      return true;
    cv_.wait_for(lock, std::chrono::nanoseconds(left));
  }
  return false;
}

void Lane::run() {
  for (;;) {
    LaneJob job{};
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || count_ > 0; });
      if (stopping_)
        return;
      job = ring_[head_];
    }
    serve(job);
    {
      std::lock_guard<std::mutex> lock(mu_);
      head_ = (head_ + 1) % ring_.size();
      --count_;
    }
  }
}

void Lane::serve(const LaneJob& job) {
  int err = 0;
  if (comm_->error.load() == ncclSuccess) {
    if (job.msg->not_before_ns > 0 && !wait_until(job.msg->not_before_ns))
      err = ECANCELED;
    if (err == 0)
      err = comm_->sender ? send_piece(job) : recv_piece(job);
    if (err != 0 && comm_->error.load() == ncclSuccess) {
      ncclResult_t code = errno_result(err);
      comm_->fail(
          code, "data socket %d: %s %zu bytes at offset %zu: %s", index_,
          comm_->sender ? "sending" : "receiving", job.len, job.offset,
          err == ECONNRESET && !comm_->sender ? "peer closed the connection"
                                              : strerror(err));
    }
  }
  if (comm_->error.load() != ncclSuccess) {
    int expected = ncclSuccess;
    job.request->error.compare_exchange_strong(expected, comm_->error.load());
  }
  // Last touch of the job: once parts_left is 0 the request may be reused.
  job.msg->parts_left.fetch_sub(1, std::memory_order_acq_rel);
  comm_->signal_wait_fd();
  comm_->note_progress();
}

int Lane::send_host(const LaneJob& job, size_t offset, size_t len) {
  const char* src = job.msg->src;
  int64_t flip = job.msg->corrupt_at;
  iovec iov[3];
  int count = 0;
  if (flip >= static_cast<int64_t>(offset) &&
      flip < static_cast<int64_t>(offset + len)) {
    size_t at = static_cast<size_t>(flip);
    static thread_local char flipped;
    flipped = static_cast<char>(src[at] ^ 0x5a);
    iov[count++] = {const_cast<char*>(src + offset), at - offset};
    iov[count++] = {&flipped, 1};
    iov[count++] = {const_cast<char*>(src + at + 1), offset + len - at - 1};
  } else {
    iov[count++] = {const_cast<char*>(src + offset), len};
  }
  return write_fully(fd_, iov, count);
}

int Lane::send_piece(const LaneJob& job) {
  size_t allowed = comm_->drop_allowance(job.len);
  size_t offset = job.offset;
  size_t left = allowed;
  while (left > 0) {
    size_t take = left;
    int err = 0;
    if (job.msg->src_device >= 0) {
      if (staging_ == nullptr &&
          (staging_ = static_cast<char*>(cuda::alloc_pinned(
               comm_->config.cuda_staging, false))) == nullptr) {
        return ENOMEM;
      }
      take = std::min(left, comm_->config.cuda_staging);
      if (!cuda::copy_to_host(staging_, job.msg->src + offset, take,
                              job.msg->src_device))
        return EIO;
      int64_t flip = job.msg->corrupt_at;
      if (flip >= static_cast<int64_t>(offset) &&
          flip < static_cast<int64_t>(offset + take)) {
        staging_[flip - offset] ^= 0x5a;
      }
      iovec iov{staging_, take};
      err = write_fully(fd_, &iov, 1);
    } else {
      err = send_host(job, offset, take);
    }
    if (err != 0)
      return err;
    comm_->account_sent(take);
    offset += take;
    left -= take;
  }
  if (allowed < job.len)
    return EPIPE; // dropped by fault injection
  return 0;
}

int Lane::recv_piece(const LaneJob& job) {
  const Destination& dest = job.msg->dest;
  size_t offset = job.offset;
  size_t left = job.len;
  while (left > 0) {
    int err = 0;
    size_t take = left;
    if (dest.discard) {
      if (scratch_.empty())
        scratch_.resize(256 << 10);
      take = std::min(left, scratch_.size());
      iovec iov{scratch_.data(), take};
      err = read_fully(fd_, &iov, 1);
    } else if (dest.device >= 0) {
      if (staging_ == nullptr &&
          (staging_ = static_cast<char*>(cuda::alloc_pinned(
               comm_->config.cuda_staging, false))) == nullptr) {
        return ENOMEM;
      }
      take = std::min(left, comm_->config.cuda_staging);
      iovec iov{staging_, take};
      err = read_fully(fd_, &iov, 1);
      if (err == 0 && !cuda::copy_to_device(dest.base + offset, staging_, take,
                                            dest.device))
        err = EIO;
    } else {
      iovec iov[IOV_MAX];
      int count = dest.iovecs(offset, left, iov, IOV_MAX, &take);
      err = read_fully(fd_, iov, count);
    }
    if (err != 0)
      return err;
    offset += take;
    left -= take;
  }
  return 0;
}

} // namespace kvsock
