// `kvferry netcheck --plugin NAME|PATH [--device N] [--connect-timeout-s S]`:
// puts any NCCL net plugin (ABI v7) through the contract of
// shared/docs/nccl-net-v7.md, calling the raw table (not kvferry's wrapper)
// with both ends of every connection in this process. One line per check:
// PASS / FAIL / SKIP and a detail; exit status 1 when any check fails.
// See docs/netcheck.md.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.hpp"
#include "kvferry/transport/plugin.hpp"

namespace kvferry::app {
namespace {

using transport::plugin;
using clock_type = std::chrono::steady_clock;

struct check_failed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct netcheck_options {
  std::string plugin_name;
  int device = 0;
  double connect_timeout_s = 30;
  double op_timeout_s = 10;
};

// "Promptly": a listen/connect/accept call that blocks for a second stalls
// NCCL's proxy thread. The first call of each kind may take longer: real
// plugins set up lazily there (one took 370 ms for its first listen).
constexpr double call_limit_ms = 1000;
constexpr double first_call_limit_ms = 5000;

double ms_since(clock_type::time_point start) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - start)
      .count();
}

// One request the suite waits for; `sizes` gets what test reports.
struct pending {
  void* request = nullptr;
  bool done = false;
  int sizes[8] = {};
  // UNPACK receives: where the bytes must end up, and the ring slot.
  void* recv_comm = nullptr;
  char* destination = nullptr;
  int slot = -1;
};

// Calls the raw v7 table with both ends in this process, retrying NULL
// requests and driving every outstanding request while it waits.
class harness {
public:
  harness(plugin& net, const netcheck_options& options)
      : net_(net), table_(net.net()), options_(options) {}

  // Closed (quietly: a check already failed) when it goes out of scope,
  // registrations first, so a failing check leaves nothing behind.
  struct connection {
    harness* owner = nullptr;
    ~connection() {
      if (owner)
        owner->close_quietly(*this);
    }
    void* listen = nullptr;
    void* send = nullptr;
    void* recv = nullptr;
    ncclNetDeviceHandle_v7_t device_storage{};
    ncclNetDeviceHandle_v7_t* recv_device = nullptr;
    int rounds = 0;
    double slowest_call_ms = 0;
    double total_ms = 0;
    std::string too_slow;    // the first call over its limit, if any
    std::string first_calls; // "listen 370 ms" for this process's first calls
  };

  // listen, then connect/accept in turns until both comms exist or the
  // connect timeout passes. Records the slowest single call.
  void open(connection& c) {
    outstanding_.clear(); // what earlier checks waited for is done
    c.owner = this;
    auto& props = net_.device(options_.device);
    char handle[NCCL_NET_HANDLE_MAXSIZE] = {};
    auto start = clock_type::now();
    call(table_.listen(options_.device, handle, &c.listen), "listen");
    timed(c, "listen", ms_since(start));
    if (!c.listen)
      throw check_failed("listen returned success with a NULL listen comm");
    c.device_storage.netDeviceType = props.device_type;
    c.device_storage.netDeviceVersion = props.device_version;
    c.recv_device = props.is_unpack() ? &c.device_storage : nullptr;
    auto deadline = start + seconds(options_.connect_timeout_s);
    while (!c.send || !c.recv) {
      ++c.rounds;
      if (!c.send) {
        auto t = clock_type::now();
        ncclNetDeviceHandle_v7_t* send_device = nullptr;
        call(table_.connect(options_.device, handle, &c.send, &send_device),
             "connect");
        timed(c, "connect", ms_since(t));
      }
      if (!c.recv) {
        auto t = clock_type::now();
        call(table_.accept(c.listen, &c.recv, &c.recv_device), "accept");
        timed(c, "accept", ms_since(t));
      }
      if (clock_type::now() > deadline)
        throw check_failed(fmt::format(
            "connect/accept not complete after {:.1f} s ({} rounds; connect "
            "{}, accept {}); raise "
            "--connect-timeout-s for a slow plugin",
            options_.connect_timeout_s, c.rounds, c.send ? "done" : "pending",
            c.recv ? "done" : "pending"));
    }
    c.total_ms = ms_since(start);
    unpack_ = props.is_unpack();
    if (unpack_) {
      if (!c.recv_device || !c.recv_device->handle)
        throw check_failed(
            "UNPACK plugin: accept left the receive device handle empty");
      unpack_comm_ = c.recv;
      unpack_device_ = c.recv_device;
      unpack_seq_ = 0;
      host_ring_ = !props.supports_cuda();
    }
  }

  void close(connection& c) {
    drop_registrations(c, true);
    // Cleared before each call so that a failing close is not retried.
    if (void* send = std::exchange(c.send, nullptr))
      call(table_.closeSend(send), "closeSend");
    if (void* recv = std::exchange(c.recv, nullptr))
      call(table_.closeRecv(recv), "closeRecv");
    if (void* listen = std::exchange(c.listen, nullptr))
      call(table_.closeListen(listen), "closeListen");
  }
  void close_quietly(connection& c) {
    drop_registrations(c, false);
    if (c.send)
      table_.closeSend(c.send);
    if (c.recv)
      table_.closeRecv(c.recv);
    if (c.listen)
      table_.closeListen(c.listen);
    c.send = c.recv = c.listen = nullptr;
  }

  void* reg(void* comm, void* data, size_t bytes) {
    void* handle = nullptr;
    call(table_.regMr(comm, data, static_cast<int>(bytes), NCCL_PTR_HOST,
                      &handle),
         "regMr");
    registrations_.push_back({comm, handle});
    return handle;
  }
  void dereg(void* comm, void* handle) {
    registrations_.erase(std::remove(registrations_.begin(),
                                     registrations_.end(),
                                     std::make_pair(comm, handle)),
                         registrations_.end());
    call(table_.deregMr(comm, handle), "deregMr");
  }

  // isend, retrying a NULL request (while driving what is outstanding).
  pending& isend(void* comm, void* data, int bytes, int tag, void* mhandle) {
    return post("isend", [&](void** request) {
      return table_.isend(comm, data, bytes, tag, mhandle, request);
    });
  }
  pending& irecv(void* comm, int n, void** data, int* sizes, int* tags,
                 void** mhandles) {
    auto& p = post("irecv", [&](void** request) {
      return table_.irecv(comm, n, data, sizes, tags, mhandles, request);
    });
    if (unpack_ && comm == unpack_comm_) {
      p.recv_comm = comm;
      p.destination = static_cast<char*>(data[0]);
      p.slot = static_cast<int>(unpack_seq_++ % NCCL_NET_UNPACK_SLOTS);
    }
    return p;
  }

  // UNPACK plugins put received bytes in bounce pages and describe them in
  // the ring of the device handle; NCCL's kernel gathers them. A plugin that
  // declares no CUDA support keeps that ring in host memory, so netcheck can
  // gather on the host and verify; otherwise data checks cannot look.
  bool unpack() const { return unpack_; }
  bool can_verify() const { return !unpack_ || host_ring_; }
  // One non-retrying post attempt; true when the plugin took it.
  bool try_isend(void* comm, void* data, int bytes, int tag, void* mhandle) {
    void* request = nullptr;
    call(table_.isend(comm, data, bytes, tag, mhandle, &request), "isend");
    if (!request) {
      ++null_requests_;
      return false;
    }
    add(request);
    return true;
  }

  // Tests every outstanding request once.
  void progress() {
    for (auto& p : outstanding_) {
      if (p.done)
        continue;
      int done = 0;
      call(table_.test(p.request, &done, p.sizes), "test");
      if (!done)
        continue;
      p.done = true;
      if (p.slot >= 0)
        consume(p);
    }
  }

  void consume(pending& p) {
    if (host_ring_) {
      auto* ring = static_cast<ncclNetUnpackHandle*>(unpack_device_->handle);
      uint64_t count = ring->meta->count[p.slot];
      if (count > NCCL_NET_UNPACK_RECORDS)
        throw check_failed(
            fmt::format("UNPACK ring slot {} claims {} records (at most {})",
                        p.slot, count, NCCL_NET_UNPACK_RECORDS));
      for (uint64_t i = 0; i < count; ++i) {
        auto& record = ring->meta->records[p.slot][i];
        std::memcpy(p.destination + record.dst_off,
                    ring->bounce_buf + record.src_off, record.len);
      }
    }
    if (table_.irecvConsumed)
      call(table_.irecvConsumed(p.recv_comm, 1, p.request), "irecvConsumed");
  }

  void wait_all(const char* what) {
    auto deadline = clock_type::now() + seconds(options_.op_timeout_s);
    for (;;) {
      progress();
      size_t left = 0;
      for (auto& p : outstanding_)
        left += !p.done;
      if (!left)
        break;
      if (clock_type::now() > deadline)
        throw check_failed(
            fmt::format("{}: {} of {} requests not done after {:.0f} s", what,
                        left, outstanding_.size(), options_.op_timeout_s));
    }
  }

  long null_requests() const { return null_requests_; }
  const ncclNet_v7_t& table() const { return table_; }

  void call(ncclResult_t rc, const char* what) {
    if (rc != ncclSuccess)
      throw check_failed(
          fmt::format("{} returned {}", what, transport::result_name(rc)));
  }

private:
  // Records one listen/connect/accept call against its limit: the first call
  // of each kind in this process gets first_call_limit_ms.
  void timed(connection& c, const char* what, double ms) {
    c.slowest_call_ms = std::max(c.slowest_call_ms, ms);
    bool first = first_calls_done_.insert(what).second;
    double limit = first ? first_call_limit_ms : call_limit_ms;
    if (first)
      c.first_calls += fmt::format("{}{} {:.0f} ms",
                                   c.first_calls.empty() ? "" : ", ", what, ms);
    if (ms > limit && c.too_slow.empty())
      c.too_slow = fmt::format("{} {} call blocked for {:.0f} ms (limit "
                               "{:.0f} ms)",
                               first ? "the first" : "a", what, ms, limit);
  }

  static clock_type::duration seconds(double s) {
    return std::chrono::duration_cast<clock_type::duration>(
        std::chrono::duration<double>(s));
  }

  pending& add(void* request) {
    // Stable addresses: callers keep references while more are added.
    if (outstanding_.size() == outstanding_.capacity()) {
      if (!outstanding_.empty())
        throw check_failed("internal: more than 1024 outstanding requests");
      outstanding_.reserve(1024);
    }
    outstanding_.push_back({request, false, {}});
    return outstanding_.back();
  }

  template<class Post>
  pending& post(const char* what, Post&& attempt) {
    auto deadline = clock_type::now() + seconds(options_.op_timeout_s);
    for (;;) {
      void* request = nullptr;
      call(attempt(&request), what);
      if (request)
        return add(request);
      ++null_requests_;
      if (clock_type::now() > deadline)
        throw check_failed(
            fmt::format("{} kept returning a NULL request for {:.0f} s", what,
                        options_.op_timeout_s));
      progress();
    }
  }

  void drop_registrations(connection& c, bool strict) {
    for (auto it = registrations_.begin(); it != registrations_.end();) {
      if (it->first != c.send && it->first != c.recv) {
        ++it;
        continue;
      }
      auto rc = table_.deregMr(it->first, it->second);
      it = registrations_.erase(it);
      if (strict)
        call(rc, "deregMr");
    }
  }

  plugin& net_;
  const ncclNet_v7_t& table_;
  std::vector<std::pair<void*, void*>> registrations_;
  bool unpack_ = false, host_ring_ = false;
  void* unpack_comm_ = nullptr; // the latest connection's receive comm
  ncclNetDeviceHandle_v7_t* unpack_device_ = nullptr;
  uint64_t unpack_seq_ = 0; // (comm, mhandle) not yet deregistered
  netcheck_options options_;
  std::vector<pending> outstanding_;
  long null_requests_ = 0;
  std::set<std::string> first_calls_done_; // listen, connect, accept
};

std::vector<char> pattern(size_t bytes, unsigned seed) {
  std::vector<char> out(bytes);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& c : out) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return out;
}

std::string first_difference(const std::vector<char>& want, const char* got,
                             size_t bytes) {
  for (size_t i = 0; i < bytes; ++i)
    if (want[i] != got[i])
      return fmt::format("byte {} differs (sent 0x{:02x}, got 0x{:02x})", i,
                         static_cast<unsigned char>(want[i]),
                         static_cast<unsigned char>(got[i]));
  return {};
}

// ---- the suite
// ---------------------------------------------------------------------------

class suite {
public:
  explicit suite(netcheck_options options) : options_(std::move(options)) {}

  int run() {
    fmt::print("kvferry netcheck: plugin {}, device {}\n", options_.plugin_name,
               options_.device);
    if (!check_probe() || !check_load() || !check_devices())
      return summary();
    // A property NCCL would not accept fails its check, but the data checks
    // still run: one run tells everything that is wrong.
    check_properties();
    harness h(*net_, options_);
    if (!check("listen/connect/accept", [&] { return connect_check(h); }))
      return summary();
    check("send/recv one message",
          [&] { return transfer_check(h, {1000}, 1000); });
    check("zero-byte message", [&] { return transfer_check(h, {0}, 64); });
    // UNPACK receives take at most 4 MiB (the ring's 2048 pages, halved for
    // slack).
    bool unpack = net_->device(options_.device).is_unpack();
    int large = unpack ? 4 << 20 : 8 << 20;
    check(unpack ? "4 MiB message, verified" : "8 MiB message, verified",
          [&] { return transfer_check(h, {large}, large); });
    check("posting-order matching", [&] { return order_check(h); });
    check("receive larger than send", [&] { return larger_recv_check(h); });
    check("grouped receive with tags", [&] { return grouped_check(h); });
    check("32 requests in flight", [&] { return inflight_check(h); });
    check("iflush", [&] { return flush_check(h); });
    check("close in every order", [&] { return close_check(h); });
    if (net_->device(options_.device).is_unpack())
      check("UNPACK device handle", [&] { return unpack_check(h); });
    nulls_seen_ = h.null_requests();
    record(nulls_seen_ > 0 ? "PASS" : "SKIP", "NULL requests tolerated",
           nulls_seen_ > 0
               ? fmt::format("{} NULL requests retried", nulls_seen_)
               : "the plugin never returned a NULL request; nothing to retry");
    return summary();
  }

private:
  // PASS, WARN (passed; a default was substituted), FAIL or SKIP.
  void record(const char* status, const std::string& name,
              const std::string& detail) {
    fmt::print("{:<4}  {:<28} {}\n", status, name, detail);
    std::fflush(stdout);
    if (!std::strcmp(status, "FAIL"))
      ++failed_;
    else if (!std::strcmp(status, "PASS"))
      ++passed_;
    else if (!std::strcmp(status, "WARN"))
      ++passed_, ++warned_;
    else
      ++skipped_;
  }

  // Runs one check: its function returns the detail ("SKIP: why" to skip,
  // "WARN: what" to pass with a warning), or throws for a failure.
  bool check(const std::string& name,
             const std::function<std::string()>& body) {
    try {
      auto detail = body();
      if (detail.rfind("SKIP: ", 0) == 0)
        record("SKIP", name, detail.substr(6));
      else if (detail.rfind("WARN: ", 0) == 0)
        record("WARN", name, detail.substr(6));
      else
        record("PASS", name, detail);
      return true;
    } catch (const std::exception& e) {
      record("FAIL", name, e.what());
      return false;
    }
  }

  int summary() {
    fmt::print("{} passed, {} failed, {} skipped{}\n", passed_, failed_,
               skipped_,
               warned_ ? fmt::format(" ({} passed with a warning)", warned_)
                       : std::string());
    return failed_ ? 1 : 0;
  }

  bool check_probe() {
    return check("probe in a child process", [&] {
      auto start = clock_type::now();
      auto report = transport::probe_plugin(options_.plugin_name);
      if (!report.ok)
        throw check_failed(report.error);
      return fmt::format("{} (table '{}'), {} device(s), {:.0f} ms",
                         report.path, report.table_name, report.devices.size(),
                         ms_since(start));
    });
  }

  bool check_load() {
    return check("load and init", [&] {
      transport::load_options options;
      options.probe_first = false; // just probed
      net_ = plugin::load(options_.plugin_name, options);
      auto& t = net_->net();
      std::string missing;
      auto need = [&](const void* slot, const char* name) {
        if (!slot)
          missing += std::string(missing.empty() ? "" : ", ") + name;
      };
      need(reinterpret_cast<const void*>(t.listen), "listen");
      need(reinterpret_cast<const void*>(t.connect), "connect");
      need(reinterpret_cast<const void*>(t.accept), "accept");
      need(reinterpret_cast<const void*>(t.regMr), "regMr");
      need(reinterpret_cast<const void*>(t.deregMr), "deregMr");
      need(reinterpret_cast<const void*>(t.isend), "isend");
      need(reinterpret_cast<const void*>(t.irecv), "irecv");
      need(reinterpret_cast<const void*>(t.test), "test");
      need(reinterpret_cast<const void*>(t.closeSend), "closeSend");
      need(reinterpret_cast<const void*>(t.closeRecv), "closeRecv");
      need(reinterpret_cast<const void*>(t.closeListen), "closeListen");
      if (!missing.empty())
        throw check_failed("NULL entries in the v7 table: " + missing);
      return fmt::format("ncclNetPlugin_v7 '{}' from {}", net_->name(),
                         net_->path());
    });
  }

  bool check_devices() {
    return check("devices > 0", [&] {
      if (options_.device < 0 || options_.device >= net_->device_count())
        throw check_failed(
            fmt::format("--device {} but the plugin has {} device(s)",
                        options_.device, net_->device_count()));
      return fmt::format("{} device(s)", net_->device_count());
    });
  }

  // The device under test only, by the rules the loader and the worker
  // apply (transport::check_properties): a default NCCL substitutes is a
  // warning, a property NCCL would refuse fails.
  bool check_properties() {
    auto& result = net_->properties_check(options_.device);
    return check(fmt::format("properties of device {}", options_.device), [&] {
      if (!result.usable())
        throw check_failed(fmt::format("{}", fmt::join(result.errors, "; ")));
      auto line = transport::describe(result.reported);
      if (result.warnings.empty())
        return line;
      return fmt::format("WARN: {}; {}", fmt::join(result.warnings, "; "),
                         line);
    });
  }

  std::string connect_check(harness& h) {
    harness::connection c;
    h.open(c);
    h.close(c);
    if (!c.too_slow.empty())
      throw check_failed(c.too_slow);
    return fmt::format("connected in {:.1f} ms over {} rounds; slowest call "
                       "{:.2f} ms; first calls: {}",
                       c.total_ms, c.rounds, c.slowest_call_ms, c.first_calls);
  }

  // Sends `sizes` in order into receives of `capacity` bytes each; verifies.
  std::string transfer_check(harness& h, const std::vector<int>& sizes,
                             int capacity) {
    harness::connection c;
    h.open(c);
    size_t total_send = 0;
    for (int s : sizes)
      total_send += static_cast<size_t>(s);
    auto source = pattern(std::max<size_t>(total_send, 1), 7);
    std::vector<char> sink(
        std::max<size_t>(static_cast<size_t>(capacity) * sizes.size(), 1));
    void* smr = h.reg(c.send, source.data(), source.size());
    void* rmr = h.reg(c.recv, sink.data(), sink.size());
    std::vector<pending*> recvs;
    size_t offset = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      void* data = sink.data() + i * capacity;
      int cap = capacity, tag = 0;
      recvs.push_back(&h.irecv(c.recv, 1, &data, &cap, &tag, &rmr));
      h.isend(c.send, source.data() + offset, sizes[i], 0, smr);
      offset += static_cast<size_t>(sizes[i]);
    }
    h.wait_all("transfer");
    offset = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      int reported = recvs[i]->sizes[0];
      if (reported != sizes[i])
        throw check_failed(
            fmt::format("receive {}: test reported {} bytes, {} were sent", i,
                        reported, sizes[i]));
      auto want = std::vector<char>(
          source.begin() + static_cast<std::ptrdiff_t>(offset),
          source.begin() + static_cast<std::ptrdiff_t>(offset + sizes[i]));
      if (!h.can_verify())
        continue;
      if (auto diff =
              first_difference(want, sink.data() + i * capacity, sizes[i]);
          !diff.empty())
        throw check_failed(fmt::format("receive {}: {}", i, diff));
      offset += static_cast<size_t>(sizes[i]);
    }
    h.dereg(c.send, smr);
    h.dereg(c.recv, rmr);
    h.close(c);
    if (!h.can_verify())
      return fmt::format("{} message(s), {} bytes; sizes checked, bytes NOT "
                         "verified (the UNPACK "
                         "ring is in GPU memory)",
                         sizes.size(), total_send);
    return fmt::format(
        "{} message(s), {} bytes verified{}", sizes.size(), total_send,
        h.unpack() ? " (gathered from the UNPACK ring on the host)" : "");
  }

  std::string order_check(harness& h) {
    // Distinct sizes: a receive matched to the wrong send shows in size and
    // data.
    std::vector<int> sizes{100, 2000, 3, 70000, 512, 1, 4096, 33333};
    transfer_check(h, sizes, 70000);
    return "8 sends of distinct sizes matched the receives in posting order";
  }

  std::string larger_recv_check(harness& h) {
    transfer_check(h, {1000}, 64 << 10);
    return "1000-byte send into a 64 KiB receive; test reported 1000";
  }

  std::string grouped_check(harness& h) {
    auto& dev = net_->device(options_.device);
    if (dev.max_recvs < 2)
      return "SKIP: maxRecvs is 1: the plugin does not group receives";
    int n = std::min(dev.max_recvs, 8);
    harness::connection c;
    h.open(c);
    const int each = 4096;
    auto source = pattern(static_cast<size_t>(n) * each, 11);
    std::vector<char> sink(static_cast<size_t>(n) * each);
    void* smr = h.reg(c.send, source.data(), source.size());
    void* rmr = h.reg(c.recv, sink.data(), sink.size());
    std::vector<void*> data(n), mhandles(n, rmr);
    std::vector<int> caps(n, each), tags(n);
    for (int i = 0; i < n; ++i) {
      data[i] = sink.data() + i * each;
      tags[i] = 100 + i;
    }
    auto& group = h.irecv(c.recv, n, data.data(), caps.data(), tags.data(),
                          mhandles.data());
    // Send in reverse tag order; sizes differ so a mix-up shows.
    for (int i = n - 1; i >= 0; --i)
      h.isend(c.send, source.data() + i * each, each - i, 100 + i, smr);
    h.wait_all("grouped receive");
    for (int i = 0; i < n; ++i) {
      if (group.sizes[i] != each - i)
        throw check_failed(
            fmt::format("buffer with tag {}: test reported {} bytes, sent {}",
                        100 + i, group.sizes[i], each - i));
      std::vector<char> want(source.begin() + i * each,
                             source.begin() + i * each + (each - i));
      if (auto diff = first_difference(want, sink.data() + i * each, each - i);
          !diff.empty())
        throw check_failed(
            fmt::format("buffer with tag {}: {}", 100 + i, diff));
    }
    h.dereg(c.send, smr);
    h.dereg(c.recv, rmr);
    h.close(c);
    return fmt::format(
        "{} buffers in one irecv, sent in reverse tag order, placed by tag", n);
  }

  std::string inflight_check(harness& h) {
    harness::connection c;
    h.open(c);
    // An UNPACK comm has one ring slot per outstanding receive.
    const int count =
        h.unpack() ? NCCL_NET_UNPACK_SLOTS : NCCL_NET_MAX_REQUESTS;
    const int each = 64 << 10;
    auto source = pattern(static_cast<size_t>(count) * each, 5);
    std::vector<char> sink(source.size());
    void* smr = h.reg(c.send, source.data(), source.size());
    void* rmr = h.reg(c.recv, sink.data(), sink.size());
    // All receives first: the contract says a comm takes 32 at once.
    for (int i = 0; i < count; ++i) {
      void* data = sink.data() + static_cast<size_t>(i) * each;
      int cap = each, tag = 0;
      h.irecv(c.recv, 1, &data, &cap, &tag, &rmr);
    }
    for (int i = 0; i < count; ++i)
      h.isend(c.send, source.data() + static_cast<size_t>(i) * each, each, 0,
              smr);
    h.wait_all("32 in flight");
    if (h.can_verify() && sink != source)
      throw check_failed(first_difference(source, sink.data(), sink.size()));
    h.dereg(c.send, smr);
    h.dereg(c.recv, rmr);
    h.close(c);
    return fmt::format(
        "{} receives and {} sends of 64 KiB outstanding, all verified{}", count,
        count, h.unpack() ? " (UNPACK: one per ring slot)" : "");
  }

  std::string flush_check(harness& h) {
    auto& t = h.table();
    if (!t.iflush)
      return "SKIP: iflush is NULL (only CUDA receives need it)";
    harness::connection c;
    h.open(c);
    std::vector<char> source = pattern(4096, 3), sink(4096);
    void* smr = h.reg(c.send, source.data(), source.size());
    void* rmr = h.reg(c.recv, sink.data(), sink.size());
    void* data = sink.data();
    int cap = 4096, tag = 0;
    h.irecv(c.recv, 1, &data, &cap, &tag, &rmr);
    h.isend(c.send, source.data(), 4096, 0, smr);
    h.wait_all("receive before iflush");
    void* request = nullptr;
    int size = 4096;
    h.call(t.iflush(c.recv, 1, &data, &size, &rmr, &request), "iflush");
    std::string detail = "NULL request (nothing to flush for host memory)";
    if (request) {
      auto deadline = clock_type::now() + std::chrono::seconds(10);
      int done = 0;
      while (!done) {
        h.call(t.test(request, &done, nullptr), "test(iflush)");
        if (clock_type::now() > deadline)
          throw check_failed("iflush not done after 10 s");
      }
      detail = "request completed";
    }
    h.dereg(c.send, smr);
    h.dereg(c.recv, rmr);
    h.close(c);
    return detail;
  }

  std::string close_check(harness& h) {
    auto& t = h.table();
    // Each scenario gets its own connection.
    harness::connection a, b;
    h.open(a);
    h.call(t.closeSend(std::exchange(a.send, nullptr)),
           "closeSend (send first)");
    h.call(t.closeRecv(std::exchange(a.recv, nullptr)),
           "closeRecv (after send)");
    h.call(t.closeListen(std::exchange(a.listen, nullptr)),
           "closeListen (last)");
    h.open(b);
    h.call(t.closeListen(std::exchange(b.listen, nullptr)),
           "closeListen (first)");
    h.call(t.closeRecv(std::exchange(b.recv, nullptr)),
           "closeRecv (recv first)");
    h.call(t.closeSend(std::exchange(b.send, nullptr)),
           "closeSend (after recv)");
    // A listen nobody connected to, and a connection after data moved.
    char handle[NCCL_NET_HANDLE_MAXSIZE] = {};
    void* lonely = nullptr;
    h.call(t.listen(options_.device, handle, &lonely), "listen");
    h.call(t.closeListen(lonely), "closeListen (never connected)");
    transfer_check(h, {4096, 4096}, 4096);
    return "send-first, recv-first, listen-first, unconnected listen, after "
           "traffic";
  }

  std::string unpack_check(harness& h) {
    harness::connection c;
    h.open(c);
    std::string detail;
    if (!c.recv_device)
      throw check_failed(
          "UNPACK plugin: accept left the receive device handle NULL");
    if (c.recv_device->netDeviceType != NCCL_NET_DEVICE_UNPACK ||
        c.recv_device->netDeviceVersion != NCCL_NET_DEVICE_UNPACK_VERSION)
      throw check_failed(
          fmt::format("device handle type {} version {}",
                      static_cast<int>(c.recv_device->netDeviceType),
                      c.recv_device->netDeviceVersion));
    if (!c.recv_device->handle)
      throw check_failed("device handle's `handle` is NULL");
    if (!h.table().irecvConsumed)
      throw check_failed("irecvConsumed is NULL");
    detail =
        fmt::format("device handle {} bytes, needsProxyProgress {}",
                    c.recv_device->size, c.recv_device->needsProxyProgress);
    h.close(c);
    return detail;
  }

  netcheck_options options_;
  std::shared_ptr<plugin> net_;
  long nulls_seen_ = 0;
  int passed_ = 0, failed_ = 0, skipped_ = 0, warned_ = 0;
};

} // namespace

void add_netcheck(CLI::App& root, int& exit_code) {
  auto options = std::make_shared<netcheck_options>();
  auto* cmd =
      root.add_subcommand("netcheck", "Check that an NCCL net plugin (ABI v7) "
                                      "honours the contract kvferry relies on");
  cmd->add_option(
      "--plugin", options->plugin_name,
      "Plugin name (libnccl-net-NAME.so on the search path) or path; default "
      "$KVFERRY_NET_PLUGIN or kvsock");
  cmd->add_option("--device", options->device, "Device index")
      ->capture_default_str();
  cmd->add_option("--connect-timeout-s", options->connect_timeout_s,
                  "How long connect/accept may take")
      ->capture_default_str();
  cmd->add_option("--op-timeout-s", options->op_timeout_s,
                  "How long one check's transfers may take")
      ->capture_default_str();
  cmd->callback([options, &exit_code] {
    if (options->plugin_name.empty())
      options->plugin_name = transport::default_plugin();
    exit_code = suite(*options).run();
  });
}

} // namespace kvferry::app
