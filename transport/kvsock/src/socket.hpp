// Socket helpers: addresses, options, non-blocking connect, full reads/writes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <netinet/in.h>
#include <string>
#include <sys/uio.h>

#include "config.hpp"

namespace kvsock {

std::string format_address(const sockaddr_in& address); // "1.2.3.4:5678"

// TCP_NODELAY and socket buffers; SO_* buffer sizes must be set before
// connect/listen to take effect on the window.
void tune_socket(int fd, const Config& config);
bool set_nonblocking(int fd, bool on);

uint64_t random_u64();
int64_t now_ns();

// Blocking helpers for the data-socket threads. Return 0 on success, else the
// errno (or ECONNRESET for an orderly close by the peer).
int write_fully(int fd, const iovec* iov, int iovcnt);
int read_fully(int fd, iovec* iov, int iovcnt);

} // namespace kvsock
