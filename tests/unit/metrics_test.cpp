// Metrics: the text format a Prometheus server parses (HELP/TYPE, label
// escaping, histogram buckets/sum/count), the series bound, concurrent
// increments, a real scrape over loopback, and the exporter's limits: a
// slow client, idle connections beyond the limit, oversized and junk requests.
#include <arpa/inet.h>
#include <chrono>
#include <cstdlib>
#include <future>
#include <netinet/in.h>
#include <poll.h>
#include <stdexcept>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/runtime/metrics.hpp"

namespace m = kvferry::metrics;

namespace {

bool contains(const std::string& text, const std::string& fragment) {
  return text.find(fragment) != std::string::npos;
}

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// A TCP connection to 127.0.0.1:port whose reads give up after 5 s.
int dial(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto addr = loopback(port);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  return fd;
}

// One HTTP request to 127.0.0.1:port; returns the whole response.
std::string http_request(std::uint16_t port, const std::string& request) {
  int fd = dial(port);
  REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size()));
  std::string reply;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
    reply.append(buf, std::size_t(n));
  ::close(fd);
  return reply;
}

} // namespace

TEST_CASE("counters and gauges render with HELP and TYPE lines") {
  m::registry reg;
  reg.get_counter("kvferry_test_total", "Things done", {{"peer", "d0"}}).inc(3);
  reg.get_counter("kvferry_test_total", "Things done", {{"peer", "d0"}}).inc();
  auto& g =
      reg.get_gauge("kvferry_test_open", "Open things\nsecond line \\ here");
  g.set(7);
  g.sub(2);
  auto text = reg.render();
  CHECK(contains(text, "# HELP kvferry_test_total Things done\n# TYPE "
                       "kvferry_test_total counter\n"
                       "kvferry_test_total{peer=\"d0\"} 4\n"));
  CHECK(contains(
      text, "# HELP kvferry_test_open Open things\\nsecond line \\\\ here\n"
            "# TYPE kvferry_test_open gauge\nkvferry_test_open 5\n"));
  CHECK(text.back() == '\n');
}

TEST_CASE("label values are escaped") {
  m::registry reg;
  reg.get_counter("kvferry_esc_total", "x",
                  {{"reason", "say \"hi\"\\now\nthen"}})
      .inc();
  CHECK(contains(
      reg.render(),
      "kvferry_esc_total{reason=\"say \\\"hi\\\"\\\\now\\nthen\"} 1\n"));
  CHECK(m::escape_label_value("plain") == "plain");
}

TEST_CASE("histograms: cumulative buckets, +Inf, sum and count") {
  m::registry reg;
  auto& h = reg.get_histogram("kvferry_lat_seconds", "Latency",
                              {0.001, 0.01, 0.1}, {{"peer", "p0"}});
  h.observe(0.0005);
  h.observe(0.001); // on the bound: counts in le="0.001"
  h.observe(0.05);
  h.observe(3);
  auto text = reg.render();
  CHECK(contains(text, "# TYPE kvferry_lat_seconds histogram\n"));
  CHECK(contains(text,
                 "kvferry_lat_seconds_bucket{peer=\"p0\",le=\"0.001\"} 2\n"
                 "kvferry_lat_seconds_bucket{peer=\"p0\",le=\"0.01\"} 2\n"
                 "kvferry_lat_seconds_bucket{peer=\"p0\",le=\"0.1\"} 3\n"
                 "kvferry_lat_seconds_bucket{peer=\"p0\",le=\"+Inf\"} 4\n"
                 "kvferry_lat_seconds_sum{peer=\"p0\"} 3.0515\n"
                 "kvferry_lat_seconds_count{peer=\"p0\"} 4\n"));
}

TEST_CASE("misuse is refused with the metric's name") {
  m::registry reg;
  reg.get_counter("kvferry_x_total", "x", {{"peer", "a"}});
  CHECK_THROWS_WITH_AS(
      reg.get_gauge("kvferry_x_total", "x"),
      doctest::Contains("'kvferry_x_total' is already registered as a counter"),
      std::invalid_argument);
  CHECK_THROWS_AS(reg.get_counter("kvferry_x_total", "x", {{"reason", "a"}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(reg.get_counter("bad name", "x"), std::invalid_argument);
  CHECK_THROWS_AS(reg.get_counter("kvferry_y_total", "x", {{"le", "1"}}),
                  std::invalid_argument);
  CHECK_THROWS_AS(reg.get_histogram("kvferry_h", "x", {1, 0.5}),
                  std::invalid_argument);
}

TEST_CASE("a family holds a bounded number of series") {
  m::registry reg;
  for (std::size_t i = 0; i < m::registry::max_series_per_family + 10; ++i)
    reg.get_counter("kvferry_many_total", "x",
                    {{"peer", "p" + std::to_string(i)}})
        .inc();
  auto text = reg.render();
  CHECK(contains(text, "kvferry_many_total{peer=\"_other\"} 10\n"));
  CHECK(contains(text, "kvferry_metrics_series_dropped_total 10\n"));
}

TEST_CASE("concurrent increments are all counted") {
  m::registry reg;
  auto& c = reg.get_counter("kvferry_conc_total", "x");
  auto& h =
      reg.get_histogram("kvferry_conc_seconds", "x", m::duration_buckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.inc();
        h.observe(0.5);
      }
    });
  for (auto& t : threads)
    t.join();
  CHECK(c.value() == 40000);
  auto s = h.read();
  CHECK(s.count == 40000);
  CHECK(s.sum == doctest::Approx(20000.0));
}

TEST_CASE("the transfer metric set") {
  m::registry reg;
  m::transfer_metrics tm(reg);
  tm.record("decode-0", /*sent=*/true, 65536, 0.002);
  tm.record("decode-0", true, 65536, 0.004);
  tm.count_error("decode-0", "timeout");
  tm.peer("decode-0").comms->set(2);
  tm.regions.set(1);
  auto text = reg.render();
  CHECK(contains(
      text,
      "kvferry_transfers_total{peer=\"decode-0\",direction=\"send\"} 2\n"));
  CHECK(contains(text, "kvferry_transfer_bytes_total{peer=\"decode-0\","
                       "direction=\"send\"} 131072\n"));
  CHECK(contains(text, "kvferry_transfer_errors_total{peer=\"decode-0\",reason="
                       "\"timeout\"} 1\n"));
  CHECK(contains(text, "kvferry_transfer_duration_seconds_count{peer=\"decode-"
                       "0\",direction=\"send\"} 2\n"));
  CHECK(contains(text, "kvferry_comms{peer=\"decode-0\"} 2\n"));
  CHECK(contains(text, "kvferry_registered_regions 1\n"));
}

TEST_CASE("a scrape over loopback") {
  m::registry reg;
  reg.get_counter("kvferry_scraped_total", "x").inc(42);
  m::http_exporter exporter(reg, {});
  REQUIRE(exporter.port() != 0);

  auto reply =
      http_request(exporter.port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(contains(reply, "HTTP/1.1 200 OK\r\n"));
  CHECK(contains(reply, "Content-Type: text/plain; version=0.0.4"));
  CHECK(contains(reply, "\r\n\r\n# HELP"));
  CHECK(contains(reply, "kvferry_scraped_total 42\n"));
  CHECK(exporter.requests_served() == 1);

  CHECK(contains(http_request(exporter.port(), "GET /nope HTTP/1.1\r\n\r\n"),
                 "404"));
  CHECK(contains(
      http_request(exporter.port(), "POST /metrics HTTP/1.1\r\n\r\n"), "405"));
  CHECK(contains(http_request(exporter.port(), std::string(9000, 'x')), "400"));
}

TEST_CASE("a port already taken is a clear error") {
  m::registry reg;
  m::http_exporter first(reg, {});
  m::http_exporter::options same;
  same.port = first.port();
  auto expected = "cannot listen on 127.0.0.1:" + std::to_string(first.port());
  CHECK_THROWS_WITH_AS(m::http_exporter(reg, same),
                       doctest::Contains(expected.c_str()), std::runtime_error);
}

TEST_CASE(
    "the exporter from the environment (how launch passes metrics_port)") {
  m::registry reg;
  ::unsetenv("KVFERRY_METRICS_PORT");
  CHECK(m::exporter_from_env(reg) == nullptr);
  ::setenv("KVFERRY_METRICS_PORT", "not-a-port", 1);
  CHECK_THROWS_WITH_AS(m::exporter_from_env(reg),
                       doctest::Contains("KVFERRY_METRICS_PORT"),
                       std::runtime_error);
  // Reserve a free port without listening on it (bound with SO_REUSEADDR,
  // as the exporter binds): nothing else can take it in between, and the
  // exporter can still listen there.
  int reserve = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(reserve >= 0);
  int one = 1;
  ::setsockopt(reserve, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  auto addr = loopback(0);
  socklen_t len = sizeof addr;
  REQUIRE(::bind(reserve, reinterpret_cast<sockaddr*>(&addr), len) == 0);
  REQUIRE(::getsockname(reserve, reinterpret_cast<sockaddr*>(&addr), &len) ==
          0);
  auto port = ntohs(addr.sin_port);
  ::setenv("KVFERRY_METRICS_PORT", std::to_string(port).c_str(), 1);
  auto exporter = m::exporter_from_env(reg);
  ::close(reserve);
  REQUIRE(exporter != nullptr);
  CHECK(exporter->port() == port);
  reg.get_counter("kvferry_env_total", "x").inc();
  CHECK(contains(http_request(port, "GET /metrics HTTP/1.0\r\n\r\n"),
                 "kvferry_env_total 1\n"));
  ::unsetenv("KVFERRY_METRICS_PORT");
}

namespace {

using steady = std::chrono::steady_clock;

// A slowloris: sends `request` one byte per `every`, until the server closes
// the connection (or `limit` passes). Returns how long the server let it on.
steady::duration trickle(std::uint16_t port, const std::string& request,
                         std::chrono::milliseconds every,
                         std::chrono::seconds limit) {
  int fd = dial(port);
  auto start = steady::now();
  std::size_t next = 0;
  while (steady::now() - start < limit) {
    if (next < request.size())
      ::send(fd, &request[next++], 1, MSG_NOSIGNAL);
    // Waiting for the server's close is the pacing: no fixed sleep.
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, int(every.count())) > 0) {
      char buf[256];
      if (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0)
        break;
    }
  }
  ::close(fd);
  return steady::now() - start;
}

} // namespace

TEST_CASE("a slow client neither blocks a scrape nor outlives its deadline") {
  m::registry reg;
  reg.get_counter("kvferry_slow_total", "x").inc(5);
  m::http_exporter exporter(reg, {}); // 2 s per request, in total
  // A byte every 500 ms: each read comes well within any per-read limit.
  const auto slow_start = steady::now();
  auto slow = std::async(std::launch::async, [&] {
    return trickle(exporter.port(), "GET /metrics HTTP/1.1\r\nHost: slow",
                   std::chrono::milliseconds(500), std::chrono::seconds(20));
  });
  std::vector<steady::time_point> replied;
  for (int i = 0; i < 3; ++i) {
    auto reply = http_request(exporter.port(), "GET /metrics HTTP/1.0\r\n\r\n");
    CHECK(contains(reply, "kvferry_slow_total 5\n"));
    replied.push_back(steady::now());
  }
  auto lasted = slow.get();
  CHECK(lasted >= std::chrono::milliseconds(1500));
  CHECK(lasted < std::chrono::seconds(6)); // cut at 2 s, not kept by trickling
  // Served beside the slow client, not after it: each reply came while the
  // slow client was still connected (an order, not a wall-clock bound that
  // a loaded sanitized run could miss).
  for (auto t : replied)
    CHECK(t < slow_start + lasted);
  CHECK(exporter.connections_dropped() >= 1);
}

TEST_CASE("idle connections beyond the limit give way to a scrape") {
  m::registry reg;
  m::http_exporter::options opts;
  opts.request_timeout_ms = 60000; // only the connection limit can help here
  m::http_exporter exporter(reg, opts);
  std::vector<int> idle;
  for (std::size_t i = 0; i < opts.max_connections * 3; ++i)
    idle.push_back(dial(exporter.port()));
  auto start = steady::now();
  CHECK(contains(http_request(exporter.port(), "GET / HTTP/1.0\r\n\r\n"),
                 "200 OK"));
  // Far below the idle connections' 60 s timeout.
  CHECK(steady::now() - start < std::chrono::seconds(10));
  CHECK(exporter.connections_dropped() >= opts.max_connections * 2);
  for (int fd : idle)
    ::close(fd);
}

TEST_CASE("a 4 GiB Content-Length and 32 bytes of junk are refused at once") {
  m::registry reg;
  reg.get_counter("kvferry_alive_total", "x").inc();
  m::http_exporter::options opts;
  opts.request_timeout_ms = 60000; // refused at once, not timed out
  m::http_exporter exporter(reg, opts);
  auto start = steady::now();
  CHECK(contains(http_request(exporter.port(),
                              "GET /metrics HTTP/1.1\r\nContent-Length: "
                              "4294967296\r\n\r\n"),
                 "413 Payload Too Large"));
  // A binary frame header, as another protocol's client would send it.
  std::string junk(32, '\0');
  junk[3] = 1;
  junk[8] = '\xff';
  CHECK(contains(http_request(exporter.port(), junk), "400 Bad Request"));
  CHECK(contains(http_request(exporter.port(), "\x16\x03\x01 TLS hello"),
                 "400 Bad Request"));
  // No timeout waited (60 s): three refusals, with room for a loaded run.
  CHECK(steady::now() - start < std::chrono::seconds(15));
  // Still serving.
  CHECK(contains(http_request(exporter.port(), "GET /metrics HTTP/1.0\r\n\r\n"),
                 "kvferry_alive_total 1\n"));
}
