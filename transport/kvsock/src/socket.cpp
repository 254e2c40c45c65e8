#include "socket.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>

#include "log.hpp"

namespace kvsock {
namespace {

bool interface_address(const char* name_prefixes, bool exact,
                       sockaddr_in* out) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0)
    return false;
  bool found = false;
  std::string prefixes(name_prefixes);
  for (ifaddrs* it = list; it != nullptr && !found; it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET)
      continue;
    if ((it->ifa_flags & IFF_UP) == 0)
      continue;
    size_t start = 0;
    while (start <= prefixes.size() && !found) {
      size_t comma = prefixes.find(',', start);
      std::string want =
          prefixes.substr(start, comma == std::string::npos ? std::string::npos
                                                            : comma - start);
      start = comma == std::string::npos ? prefixes.size() + 1 : comma + 1;
      if (want.empty())
        continue;
      bool match =
          exact ? want == it->ifa_name
                : std::strncmp(it->ifa_name, want.c_str(), want.size()) == 0;
      if (match) {
        std::memcpy(out, it->ifa_addr, sizeof(sockaddr_in));
        found = true;
      }
    }
  }
  freeifaddrs(list);
  return found;
}

bool first_non_loopback(sockaddr_in* out) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0)
    return false;
  bool found = false;
  for (ifaddrs* it = list; it != nullptr; it = it->ifa_next) {
    if (it->ifa_addr == nullptr || it->ifa_addr->sa_family != AF_INET)
      continue;
    if ((it->ifa_flags & IFF_UP) == 0 || (it->ifa_flags & IFF_LOOPBACK) != 0)
      continue;
    std::memcpy(out, it->ifa_addr, sizeof(sockaddr_in));
    found = true;
    break;
  }
  freeifaddrs(list);
  return found;
}

} // namespace

bool choose_listen_address(sockaddr_in* out, std::string* why) {
  std::memset(out, 0, sizeof *out);
  out->sin_family = AF_INET;
  if (const char* ifaddr = std::getenv("KVSOCK_IFADDR");
      ifaddr != nullptr && *ifaddr != '\0') {
    if (inet_pton(AF_INET, ifaddr, &out->sin_addr) == 1) {
      *why = std::string("KVSOCK_IFADDR=") + ifaddr;
      return true;
    }
    if (interface_address(ifaddr, true, out)) {
      *why = std::string("KVSOCK_IFADDR=") + ifaddr + " (interface)";
      return true;
    }
    KVSOCK_WARN("KVSOCK_IFADDR=\"%s\" is neither an IPv4 address nor an "
                "interface with one",
                ifaddr);
    return false;
  }
  if (const char* names = std::getenv("NCCL_SOCKET_IFNAME");
      names != nullptr && *names != '\0') {
    bool exact = names[0] == '=';
    if (interface_address(exact ? names + 1 : names, exact, out)) {
      *why = std::string("NCCL_SOCKET_IFNAME=") + names;
      return true;
    }
    KVSOCK_WARN("NCCL_SOCKET_IFNAME=\"%s\" matches no IPv4 interface that is "
                "up; using the default",
                names);
  }
  if (first_non_loopback(out)) {
    *why = "first non-loopback IPv4 interface";
    return true;
  }
  out->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  *why = "loopback (no other IPv4 interface)";
  return true;
}

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
