// Metrics: a small registry of counters, gauges and fixed-bucket histograms
// with labels, rendered in the Prometheus text format (version 0.0.4) and
// served over HTTP by `http_exporter` (GET /metrics).
//
// Hot path: look a metric up once (that takes a lock and may allocate), keep
// the reference, then `inc`/`set`/`observe` are relaxed atomics with no lock
// and no allocation. References stay valid for the registry's lifetime.
//
// Bounds: each family holds at most `max_series_per_family` label sets; past
// that, lookups return one shared series whose label values are all "_other"
// (and count it in kvferry_metrics_series_dropped_total), so a stream of
// peer names cannot grow memory without limit.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace kvferry::metrics {

// Label name/value pairs, e.g. {{"peer", "decode-0"}, {"reason", "timeout"}}.
using labels = std::vector<std::pair<std::string, std::string>>;

class counter {
public:
  void inc(std::uint64_t n = 1) noexcept {
    value_.fetch_add(n, std::memory_order_relaxed);
  }
  std::uint64_t value() const noexcept {
    return value_.load(std::memory_order_relaxed);
  }

private:
  std::atomic<std::uint64_t> value_{0};
};

class gauge {
public:
  void set(std::int64_t v) noexcept {
    value_.store(v, std::memory_order_relaxed);
  }
  void add(std::int64_t d) noexcept {
    value_.fetch_add(d, std::memory_order_relaxed);
  }
  void sub(std::int64_t d) noexcept {
    value_.fetch_sub(d, std::memory_order_relaxed);
  }
  std::int64_t value() const noexcept {
    return value_.load(std::memory_order_relaxed);
  }

private:
  std::atomic<std::int64_t> value_{0};
};

class histogram {
public:
  // `upper_bounds` ascending, finite; a +Inf bucket is implied.
  explicit histogram(std::vector<double> upper_bounds);
  void observe(double value) noexcept;

  struct snapshot {
    std::vector<double> upper_bounds;
    std::vector<std::uint64_t> cumulative; // one per bound, then +Inf
    double sum = 0;
    std::uint64_t count = 0;
  };
  snapshot read() const;
  const std::vector<double>& upper_bounds() const noexcept { return bounds_; }

private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_; // bounds_.size() + 1
  std::atomic<std::uint64_t> sum_bits_{0}; // a double, updated by CAS
  std::atomic<std::uint64_t> count_{0};
};

// Buckets for durations in seconds, 100 µs to 10 s (KV transfers range from a
// single 32 KiB block over loopback to gigabytes over a slow link).
const std::vector<double>& duration_buckets();

class registry {
public:
  static constexpr std::size_t max_series_per_family = 1024;

  registry();
  ~registry();
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  // The process-wide registry the exporter serves by default.
  static registry& global();

  // Get or create. Throws std::invalid_argument for a bad metric or label
  // name, or a name already registered with another type, help or buckets.
  counter& get_counter(const std::string& name, const std::string& help,
                       const labels& label_set = {});
  gauge& get_gauge(const std::string& name, const std::string& help,
                   const labels& label_set = {});
  histogram& get_histogram(const std::string& name, const std::string& help,
                           const std::vector<double>& upper_bounds,
                           const labels& label_set = {});

  // Prometheus text exposition format 0.0.4, families sorted by name.
  std::string render() const;

private:
  struct family;
  family& family_for(const std::string& name, const std::string& help, int type,
                     const std::vector<double>* bounds);
  void* series_for(family& f, const labels& label_set);

  mutable std::mutex mutex_;
  std::map<std::string, std::unique_ptr<family>> families_;
  counter* dropped_series_ = nullptr;
};

// Escapes a label value for the text format: \ " and newline.
std::string escape_label_value(const std::string& value);

// The metrics a worker keeps about KV transfers. Per-peer handles are created
// on first use and cached, so the per-transfer cost is atomics only.
class transfer_metrics {
public:
  struct direction_series {
    counter* transfers;
    counter* bytes;
    histogram* seconds;
  };
  struct peer_series {
    direction_series send;
    direction_series recv;
    gauge* comms; // plugin comms open to this peer
  };

  explicit transfer_metrics(registry& reg = registry::global());

  peer_series& peer(const std::string& name);
  // Errors are rare: a registry lookup per call is fine.
  void count_error(const std::string& peer, const std::string& reason);

  gauge& regions;          // registered memory regions
  gauge& registered_bytes; // bytes in registered regions
  gauge& in_flight;        // transfers started and not yet finished

  // One finished transfer: counts it, its bytes and its duration.
  void record(const std::string& peer, bool sent, std::uint64_t bytes,
              double seconds);

private:
  registry& registry_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<peer_series>> peers_;
};

// Serves GET /metrics (and GET /) from a registry over HTTP/1.0-style
// one-request connections, on its own thread with plain sockets. Every
// connection is bounded: its request head to 8 KiB, its whole life (request
// and response) to `request_timeout_ms`, and at most `max_connections` are
// open at once; when a new one arrives at the limit the oldest is closed, so a
// slow or hostile client can neither pin memory nor keep a scraper out.
class http_exporter {
public:
  struct options {
    std::string bind = "127.0.0.1"; // loopback unless asked otherwise
    std::uint16_t port = 0;         // 0: any free port (see port())
    int request_timeout_ms = 2000;  // total, from accept to the last byte sent
    std::size_t max_connections = 16;
  };

  // Binds and starts serving. Throws std::runtime_error naming the address
  // and the reason when the socket cannot be bound.
  http_exporter(registry& reg, options opts);
  ~http_exporter(); // stops the thread and closes the socket
  http_exporter(const http_exporter&) = delete;
  http_exporter& operator=(const http_exporter&) = delete;

  std::uint16_t port() const noexcept { return port_; }
  std::uint64_t requests_served() const noexcept { return served_.load(); }
  // Connections closed unanswered: past their deadline, or evicted.
  std::uint64_t connections_dropped() const noexcept { return dropped_.load(); }

private:
  void serve();
  // The response to a complete request head.
  std::string answer(const std::string& head);

  registry& registry_;
  options options_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};
  std::uint16_t port_ = 0;
  std::atomic<std::uint64_t> served_{0};
  std::atomic<std::uint64_t> dropped_{0};
  std::thread thread_;
};

// Starts an exporter for `reg` when $KVFERRY_METRICS_PORT is set (that is
// how `kvferry launch` passes a worker's metrics_port), bound to
// $KVFERRY_METRICS_BIND or 127.0.0.1. Returns nullptr when the port is unset
// or 0; throws std::runtime_error naming the variable for a bad value, or
// naming the address when the port cannot be bound.
std::unique_ptr<http_exporter>
exporter_from_env(registry& reg = registry::global());

} // namespace kvferry::metrics
