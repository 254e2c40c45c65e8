// The Prometheus endpoint: plain sockets on one thread. A scrape every few
// seconds does not justify an HTTP library; what matters is that a slow or
// hostile client can neither block the worker, nor keep other scrapers out,
// nor grow its memory. Hence one poll loop over non-blocking connections,
// each with a total deadline (not a per-read one: a byte every 1.5 s must not
// keep a connection alive), a request size limit, a bound on how many are open
// (the oldest gives way to a new one), and junk refused at its first bytes.
#include <algorithm>
#include <arpa/inet.h>
#include <cctype>
#include <cerrno>
#include <chrono>
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

using steady = std::chrono::steady_clock;

constexpr std::size_t max_request_bytes = 8192;

// Bytes of a request body (never wanted) read and discarded after the
// response, so that closing does not reset the connection before the client
// has read the response.
constexpr std::size_t max_drain_bytes = 64 << 10;

// One client: reading its request head, writing the response, then draining
// what it sent beyond the head until it closes.
struct connection {
  enum phase_t { reading, writing, draining, done };
  int fd = -1;
  steady::time_point deadline;
  phase_t phase = reading;
  std::string in;
  std::string out; // set once the head is complete or refused
  std::size_t sent = 0;
  std::size_t drained = 0;
  bool answered() const { return phase == draining || phase == done; }
};

std::string response(int status, const char* reason, const char* content_type,
                     const std::string& body) {
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      status, reason, content_type, body.size(), body);
}

std::string bad_request(const char* why) {
  return response(400, "Bad Request", "text/plain", fmt::format("{}\n", why));
}

bool head_complete(const std::string& in) {
  return in.find("\r\n\r\n") != std::string::npos ||
         in.find("\n\n") != std::string::npos;
}

// What can be refused before the head is complete: a head over the limit, or
// first bytes that are not "METHOD /" (binary junk, another protocol).
const char* refuse_early(const std::string& in) {
  if (in.size() > max_request_bytes)
    return "bad or oversized request";
  std::size_t i = 0;
  while (i < in.size() && i < 16 && in[i] >= 'A' && in[i] <= 'Z')
    ++i;
  if (i == in.size())
    return nullptr; // the method is still arriving
  if (i == 0 || in[i] != ' ' || (i + 1 < in.size() && in[i + 1] != '/'))
    return "malformed request line";
  return nullptr;
}

// A header's value, matched case-insensitively; "" when absent.
std::string header_value(const std::string& head, const std::string& name) {
  std::size_t pos = head.find('\n');
  while (pos != std::string::npos && pos + 1 < head.size()) {
    auto end = head.find('\n', pos + 1);
    auto line = head.substr(
        pos + 1, end == std::string::npos ? std::string::npos : end - pos - 1);
    if (line.size() > name.size() && line[name.size()] == ':' &&
        std::equal(name.begin(), name.end(), line.begin(), [](char a, char b) {
          return a == std::tolower(static_cast<unsigned char>(b));
        })) {
      auto value = line.substr(name.size() + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      value.erase(value.find_last_not_of(" \t\r") + 1);
      return value;
    }
    pos = end;
  }
  return {};
}

bool would_block(ssize_t n) {
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
}

// Appends what has arrived to c.in (or, draining, counts and drops it).
void read_some(connection& c) {
  char buf[2048];
  auto n = ::recv(c.fd, buf, sizeof buf, 0);
  if (would_block(n))
    return;
  if (n <= 0) {
    c.phase = connection::done; // closed or reset
    return;
  }
  if (c.phase == connection::draining) {
    c.drained += static_cast<std::size_t>(n);
    if (c.drained > max_drain_bytes)
      c.phase = connection::done;
    return;
  }
  c.in.append(buf, static_cast<std::size_t>(n));
}

void write_some(connection& c) {
  auto n = ::send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent,
                  MSG_NOSIGNAL | MSG_DONTWAIT);
  if (would_block(n))
    return;
  if (n <= 0) {
    c.phase = connection::done;
    return;
  }
  c.sent += static_cast<std::size_t>(n);
  if (c.sent == c.out.size()) {
    ::shutdown(c.fd, SHUT_WR); // the client sees the end of the response
    c.phase = connection::draining;
  }
}

// Reads or writes what the socket allows; `answer` makes the response to a
// complete request head.
template<class Answer>
void progress(connection& c, Answer&& answer) {
  if (c.phase == connection::writing) {
    write_some(c);
    return;
  }
  read_some(c);
  if (c.phase != connection::reading)
    return;
  if (auto why = refuse_early(c.in))
    c.out = bad_request(why);
  else if (head_complete(c.in))
    c.out = answer(c.in);
  if (c.out.empty())
    return;
  c.phase = connection::writing;
  write_some(c); // usually all of it at once
}

// Milliseconds until the earliest deadline; -1 (forever) with none open.
int poll_timeout_ms(const std::vector<connection>& open) {
  if (open.empty())
    return -1;
  auto earliest =
      std::min_element(open.begin(), open.end(), [](auto& a, auto& b) {
        return a.deadline < b.deadline;
      })->deadline;
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                  earliest - steady::now())
                  .count();
  return static_cast<int>(std::clamp<long long>(left + 1, 0, 60000));
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
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0)
    throw std::runtime_error(
        fmt::format("metrics exporter: socket(): {}", std::strerror(errno)));
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) !=
          0 ||
      ::listen(listen_fd_, 64) != 0 || ::pipe2(wake_fds_, O_CLOEXEC) != 0) {
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
  std::vector<connection> open; // in accept order: the oldest first
  std::vector<pollfd> fds;
  auto limit = std::chrono::milliseconds(options_.request_timeout_ms);
  auto max_open = std::max<std::size_t>(1, options_.max_connections);
  for (;;) {
    fds.assign({{listen_fd_, POLLIN, 0}, {wake_fds_[0], POLLIN, 0}});
    for (auto& c : open)
      fds.push_back(
          {c.fd, short(c.phase == connection::writing ? POLLOUT : POLLIN), 0});
    if (::poll(fds.data(), fds.size(), poll_timeout_ms(open)) < 0 &&
        errno != EINTR)
      break;
    if (fds[1].revents != 0)
      break; // asked to stop
    for (std::size_t i = 0; i < open.size(); ++i)
      if (fds[i + 2].revents != 0)
        progress(open[i], [this](auto& head) { return answer(head); });
    auto now = steady::now();
    auto closed = std::remove_if(open.begin(), open.end(), [&](auto& c) {
      if (c.phase != connection::done && now < c.deadline)
        return false;
      if (!c.answered())
        dropped_.fetch_add(1);
      ::close(c.fd);
      return true;
    });
    open.erase(closed, open.end());
    if ((fds[0].revents & POLLIN) == 0)
      continue;
    int client =
        ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (client < 0)
      continue;
    if (open.size() >= max_open) {
      // The oldest has had the longest to finish; a scrape takes
      // milliseconds, so it is the likeliest to be a slow or idle client.
      if (!open.front().answered())
        dropped_.fetch_add(1);
      ::close(open.front().fd);
      open.erase(open.begin());
    }
    connection fresh;
    fresh.fd = client;
    fresh.deadline = steady::now() + limit;
    open.push_back(std::move(fresh));
  }
  for (auto& c : open)
    ::close(c.fd);
}

std::string http_exporter::answer(const std::string& head) {
  auto line = head.substr(0, head.find_first_of("\r\n"));
  auto first_space = line.find(' ');
  auto second_space = line.find(' ', first_space + 1);
  if (first_space == std::string::npos || second_space == std::string::npos)
    return bad_request("malformed request line");
  auto method = line.substr(0, first_space);
  auto path = line.substr(first_space + 1, second_space - first_space - 1);
  if (method != "GET")
    return response(405, "Method Not Allowed", "text/plain", "only GET\n");
  // A scrape has no body; one announced (of any size) is never read.
  if (auto length = header_value(head, "content-length");
      !length.empty() && length != "0")
    return response(413, "Payload Too Large", "text/plain",
                    "a GET /metrics has no body\n");
  if (path != "/metrics" && path != "/")
    return response(404, "Not Found", "text/plain", "try /metrics\n");
  served_.fetch_add(1);
  return response(200, "OK", "text/plain; version=0.0.4; charset=utf-8",
                  registry_.render());
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
