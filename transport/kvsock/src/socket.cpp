#include "socket.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>

#include "log.hpp"

namespace kvsock {
std::string format_address(const sockaddr_in& address) {
  char text[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &address.sin_addr, text, sizeof text);
  return std::string(text) + ":" + std::to_string(ntohs(address.sin_port));
}

void tune_socket(int fd, const Config& config) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (config.socket_buffer > 0) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &config.socket_buffer,
               sizeof config.socket_buffer);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &config.socket_buffer,
               sizeof config.socket_buffer);
  }
}

bool set_nonblocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0)
    return false;
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  return fcntl(fd, F_SETFL, flags) == 0;
}

uint64_t random_u64() {
  uint64_t value = 0;
  if (getrandom(&value, sizeof value, 0) !=
      static_cast<ssize_t>(sizeof value)) {
    // getrandom cannot fail for 8 bytes once the pool is initialised; mix time
    // and address bits so a nonce is never a constant.
    value = static_cast<uint64_t>(now_ns()) ^
            (reinterpret_cast<uintptr_t>(&value) << 17);
  }
  return value;
}

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Advance an iovec array past `done` bytes.
static void consume_iov(iovec*& iov, int& iovcnt, size_t done) {
  while (iovcnt > 0 && done >= iov->iov_len) {
    done -= iov->iov_len;
    ++iov;
    --iovcnt;
  }
  if (iovcnt > 0 && done > 0) {
    iov->iov_base = static_cast<char*>(iov->iov_base) + done;
    iov->iov_len -= done;
  }
}

int write_fully(int fd, const iovec* iov_in, int iovcnt) {
  iovec local[IOV_MAX];
  if (iovcnt > IOV_MAX)
    return EINVAL;
  std::memcpy(local, iov_in, sizeof(iovec) * iovcnt);
  iovec* iov = local;
  while (iovcnt > 0) {
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(iovcnt);
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    consume_iov(iov, iovcnt, static_cast<size_t>(n));
  }
  return 0;
}

int read_fully(int fd, iovec* iov, int iovcnt) {
  while (iovcnt > 0) {
    if (iov->iov_len == 0) {
      ++iov;
      --iovcnt;
      continue;
    }
    ssize_t n;
    if (iovcnt == 1) {
      n = recv(fd, iov->iov_base, iov->iov_len, MSG_WAITALL);
    } else {
      n = readv(fd, iov, iovcnt);
    }
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    if (n == 0)
      return ECONNRESET;
    consume_iov(iov, iovcnt, static_cast<size_t>(n));
  }
  return 0;
}

} // namespace kvsock
