// The Prometheus endpoint: plain sockets on one thread. A scrape every few
// seconds does not justify an HTTP library; what matters is that a slow or
// hostile client can neither block the worker nor grow its memory, hence one
// connection at a time, a request size limit and socket timeouts.
#include <arpa/inet.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include "kvferry/runtime/metrics.hpp"

namespace kvferry::metrics {
namespace {

constexpr std::size_t max_request_bytes = 8192;

void set_io_timeout(int fd, int timeout_ms) {
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

bool send_all(int fd, const std::string& data) {
  std::size_t sent = 0;
  while (sent < data.size()) {
    auto n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    sent += static_cast<std::size_t>(n);
  }
  return true;
}

// Reads the request head (up to the blank line); "" on timeout, error or a
// request over the size limit.
std::string read_request_head(int fd) {
  std::string request;
  char buf[1024];
  while (request.find("\r\n\r\n") == std::string::npos &&
         request.find("\n\n") == std::string::npos) {
    if (request.size() >= max_request_bytes)
      return {};
    auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return request.empty() ? std::string{} : request;
    request.append(buf, static_cast<std::size_t>(n));
  }
  return request;
}

std::string response(int status, const char* reason, const char* content_type,
                     const std::string& body) {
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      status, reason, content_type, body.size(), body);
}

} // namespace

http_exporter::http_exporter(registry& reg, options opts)
    : registry_(reg), options_(std::move(opts)) {
  auto where = fmt::format("{}:{}", options_.bind, options_.port);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(options_.port);
  if (::inet_pton(AF_INET, options_.bind.c_str(), &addr.sin_addr) != 1)
    throw std::runtime_error(fmt::format(
        "metrics exporter: '{}' is not an IPv4 address", options_.bind));
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0)
    throw std::runtime_error(
        fmt::format("metrics exporter: socket(): {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) !=
          0 ||
      ::listen(listen_fd_, 16) != 0 || ::pipe2(wake_fds_, O_CLOEXEC) != 0) {
    auto why = std::strerror(errno);
    ::close(listen_fd_);
    throw std::runtime_error(
        fmt::format("metrics exporter: cannot listen on {}: {}", where, why));
  }
  socklen_t len = sizeof addr;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { serve(); });
}

http_exporter::~http_exporter() {
  char byte = 0;
  [[maybe_unused]] auto n = ::write(wake_fds_[1], &byte, 1);
  if (thread_.joinable())
    thread_.join();
  ::close(listen_fd_);
  ::close(wake_fds_[0]);
  ::close(wake_fds_[1]);
}

void http_exporter::serve() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fds_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    if (fds[1].revents != 0)
      return; // asked to stop
    if ((fds[0].revents & POLLIN) == 0)
      continue;
    int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0)
      continue;
    set_io_timeout(client, options_.io_timeout_ms);
    handle(client);
    ::close(client);
  }
}

void http_exporter::handle(int client) {
  auto request = read_request_head(client);
  if (request.empty()) {
    send_all(client, response(400, "Bad Request", "text/plain",
                              "bad or oversized request\n"));
    return;
  }
  auto line_end = request.find_first_of("\r\n");
  auto line = request.substr(0, line_end);
  auto first_space = line.find(' ');
  auto second_space = line.find(' ', first_space + 1);
  if (first_space == std::string::npos || second_space == std::string::npos) {
    send_all(client, response(400, "Bad Request", "text/plain",
                              "malformed request line\n"));
    return;
  }
  auto method = line.substr(0, first_space);
  auto path = line.substr(first_space + 1, second_space - first_space - 1);
  if (method != "GET") {
    send_all(client,
             response(405, "Method Not Allowed", "text/plain", "only GET\n"));
    return;
  }
  if (path != "/metrics" && path != "/") {
    send_all(client,
             response(404, "Not Found", "text/plain", "try /metrics\n"));
    return;
  }
  send_all(client,
           response(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                    registry_.render()));
  served_.fetch_add(1);
}

std::unique_ptr<http_exporter> exporter_from_env(registry& reg) {
  const char* port_text = std::getenv("KVFERRY_METRICS_PORT");
  if (port_text == nullptr || *port_text == '\0')
    return nullptr;
  char* end = nullptr;
  errno = 0;
  auto port = std::strtoul(port_text, &end, 10);
  if (errno != 0 || *end != '\0' || port > 65535)
    throw std::runtime_error(fmt::format(
        "KVFERRY_METRICS_PORT='{}' is not a port number (0-65535)", port_text));
  if (port == 0)
    return nullptr;
  http_exporter::options opts;
  opts.port = static_cast<std::uint16_t>(port);
  if (const char* bind = std::getenv("KVFERRY_METRICS_BIND");
      bind != nullptr && *bind != '\0')
    opts.bind = bind;
  return std::make_unique<http_exporter>(reg, opts);
}

} // namespace kvferry::metrics
