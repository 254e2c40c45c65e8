// run_endpoint_bench (endpoint_bench.hpp): per (op, size, depth), `depth`
// transfers kept in flight over slots of one registered buffer per side,
// the oldest awaited before the next is issued; afterwards the slots used
// are compared byte for byte with the source.
#include "kvferry/endpoint_bench.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <deque>
#include <sys/resource.h>

#include <fmt/format.h>

#include "kvferry/endpoint.hpp"

namespace kvferry {
namespace {

using clock_type = std::chrono::steady_clock;
constexpr auto limit = std::chrono::milliseconds(60000);
constexpr std::uint64_t buffer_cap = std::uint64_t{256} << 20;

struct bench_pair {
  bench_pair(endpoint x, endpoint y) : a(std::move(x)), b(std::move(y)) {}
  endpoint a, b;
  conn_id ab = 0, ba = 0;
  std::vector<std::uint8_t> abuf, bbuf;
  region_id ar = 0, br = 0;
  descriptor adesc, bdesc;
};

// The p50 as bench_row takes it (the upper median).
double median(std::vector<double> xs) {
  if (xs.empty())
    return 0;
  std::nth_element(xs.begin(), xs.begin() + xs.size() / 2, xs.end());
  return xs[xs.size() / 2];
}

result<bench_pair> make_pair(const endpoint_bench_options& o,
                             std::uint64_t bytes) {
  endpoint_options eo;
  eo.plugin = o.plugin;
  eo.threads = o.threads;
  eo.transfer_timeout = limit;
  auto a = endpoint::create(eo);
  if (!a.ok())
    return a.error();
  auto b = endpoint::create(eo);
  if (!b.ok())
    return b.error();
  bench_pair p{std::move(a).value(), std::move(b).value()};
  auto ab = p.a.connect(p.b.metadata());
  if (!ab.ok())
    return ab.error();
  auto ba = p.b.accept(limit);
  if (!ba.ok())
    return ba.error();
  p.ab = *ab;
  p.ba = *ba;
  p.abuf.resize(bytes);
  for (std::size_t i = 0; i < bytes; ++i)
    p.abuf[i] = static_cast<std::uint8_t>(i * 7 + i / 4093);
  p.bbuf.assign(bytes, 0);
  auto ar = p.a.reg(p.abuf.data(), bytes, -1);
  auto br = p.b.reg(p.bbuf.data(), bytes, -1);
  if (!ar.ok())
    return ar.error();
  if (!br.ok())
    return br.error();
  p.ar = *ar;
  p.br = *br;
  p.adesc = p.a.advertise(p.ar, 0, bytes).value();
  p.bdesc = p.b.advertise(p.br, 0, bytes).value();
  return p;
}

// Issues operation k (slot `off`); the ids to await, the last one
// completing it (send: the recv).
// One operation's transfer ids (a send's are two: the recv's, the send's),
// held inline: the bench allocates nothing of its own per operation, so
// that a count of allocations per operation is the endpoint's.
struct op_ids {
  std::array<xfer_id, 2> id{};
  std::size_t count = 0;
  void push_back(xfer_id x) { id[count++] = x; }
  std::size_t size() const { return count; }
  xfer_id operator[](std::size_t i) const { return id[i]; }
};

result<op_ids> issue(bench_pair& p, const std::string& op, std::uint64_t off,
                     std::uint64_t size) {
  op_ids ids;
  auto add = [&](result<xfer_id> r) {
    if (r.ok())
      ids.push_back(*r);
    return r.ok() ? status{} : r.error();
  };
  status s;
  if (op == "write") {
    s = add(
        p.a.write(p.ab, {{p.ar, off, size}}, {p.bdesc.sub(off, size).value()}));
  } else if (op == "read") { // b pulls a's bytes
    s = add(
        p.b.read(p.ba, {{p.br, off, size}}, {p.adesc.sub(off, size).value()}));
  } else {
    s = add(p.b.recv(p.ba, {{p.br, off, size}}));
    if (s.ok())
      s = add(p.a.send(p.ab, {{p.ar, off, size}}));
  }
  if (!s.ok())
    return s;
  return ids;
}

status await(bench_pair& p, const std::string& op, const op_ids& ids) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    // send's ids: the recv's on b, then the send's on a.
    auto& ep = (op == "write" || (op == "send" && i == 1)) ? p.a : p.b;
    auto r = ep.wait(ids[i], limit);
    if (!r.ok())
      return r.error();
  }
  return {};
}

// CPU time (user + system) this process used so far, in microseconds.
double process_cpu_us() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto us = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) * 1e6 + static_cast<double>(t.tv_usec);
  };
  return us(u.ru_utime) + us(u.ru_stime);
}

// The issuing call's own cost (p50, microseconds per call): bursts of 16
// back-to-back calls, each timed, then awaited; apart from the timed loop,
// where each call follows a wait and so mostly times the machine (the
// threads that just finished the transfer still hold the cores). Python's
// bench times its calls alike (python/kvferry/bench.py, call_cost).
result<double> call_cost(bench_pair& p, const std::string& op,
                         std::uint64_t size, std::uint64_t slots) {
  constexpr int bursts = 16, burst = 16;
  std::vector<double> calls;
  for (int b = 0; b < bursts; ++b) {
    std::vector<op_ids> issued;
    for (int k = 0; k < burst; ++k) {
      auto before = clock_type::now();
      auto ids = issue(p, op, (k % slots) * size, size);
      auto after = clock_type::now();
      if (!ids.ok())
        return ids.error();
      // A send is two calls (recv, send).
      calls.push_back(
          std::chrono::duration<double, std::micro>(after - before).count() /
          static_cast<double>(ids->size()));
      issued.push_back(std::move(*ids));
    }
    for (const auto& ids : issued)
      if (auto s = await(p, op, ids); !s.ok())
        return s;
  }
  return median(std::move(calls));
}

result<endpoint_bench_row> measure(bench_pair& p,
                                   const endpoint_bench_options& o,
                                   const std::string& op, std::uint64_t size,
                                   int depth) {
  const std::uint64_t slots = std::max<std::uint64_t>(
      1, std::min<std::uint64_t>(static_cast<std::uint64_t>(depth),
                                 p.abuf.size() / size));
  const std::uint64_t n = std::clamp<std::uint64_t>(
      o.bytes_per_point / size, std::max<std::uint64_t>(o.min_ops, slots),
      o.max_ops);
  // One untimed operation first: the row measures the steady state, not
  // the first use of a path (the channel's opening, first touches).
  auto warm = issue(p, op, 0, size);
  if (auto s = warm.ok() ? await(p, op, *warm) : warm.error(); !s.ok())
    return status{s.code(), fmt::format("{} of {} B (warm-up): {}", op, size,
                                        s.reason())};
  auto call = call_cost(p, op, size, slots);
  if (!call.ok())
    return status{
        call.error().code(),
        fmt::format("{} of {} B (calls): {}", op, size, call.error().reason())};
  std::memset(p.bbuf.data(), 0, slots * size);
  struct flight {
    op_ids ids;
    clock_type::time_point issued;
  };
  std::deque<flight> in_flight;
  std::vector<double> lat;
  lat.reserve(n);
  auto start = clock_type::now();
  const double cpu_start = process_cpu_us();
  for (std::uint64_t k = 0; k < n || !in_flight.empty();) {
    if (k < n && in_flight.size() < static_cast<std::size_t>(depth)) {
      auto ids = issue(p, op, (k % slots) * size, size);
      if (!ids.ok())
        return status{
            ids.error().code(),
            fmt::format("{} of {} B: {}", op, size, ids.error().reason())};
      in_flight.push_back({std::move(*ids), clock_type::now()});
      ++k;
      continue;
    }
    auto f = std::move(in_flight.front());
    in_flight.pop_front();
    auto s = await(p, op, f.ids);
    if (!s.ok())
      return status{s.code(),
                    fmt::format("{} of {} B: {}", op, size, s.reason())};
    lat.push_back(
        std::chrono::duration<double, std::micro>(clock_type::now() - f.issued)
            .count());
  }
  double secs =
      std::chrono::duration<double>(clock_type::now() - start).count();
  const double cpu = process_cpu_us() - cpu_start;
  const double slowest =
      lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end());
  auto row =
      bench_row(op, size, depth, n, secs, std::move(lat),
                std::memcmp(p.bbuf.data(), p.abuf.data(), slots * size) == 0);
  row.call_p50_us = *call;
  row.cpu_us_per_op = cpu / static_cast<double>(n);
  row.max_us = slowest;
  return row;
}

} // namespace

endpoint_bench_row bench_row(std::string op, std::uint64_t size, int depth,
                             std::uint64_t ops, double seconds,
                             std::vector<double> latencies_us, bool verified) {
  std::sort(latencies_us.begin(), latencies_us.end());
  endpoint_bench_row row;
  row.op = std::move(op);
  row.size = size;
  row.depth = depth;
  row.ops = ops;
  row.gbps = static_cast<double>(ops * size) / seconds / 1e9;
  row.us_per_op = seconds * 1e6 / static_cast<double>(ops);
  row.p50_us = latencies_us.empty() ? 0 : latencies_us[latencies_us.size() / 2];
  row.verified = verified;
  return row;
}

result<std::vector<endpoint_bench_row>>
run_endpoint_bench(const endpoint_bench_options& o) {
  if (o.sizes.empty() || o.depths.empty() || o.ops.empty())
    return status{ec::invalid_argument, "bench endpoint: nothing to measure"};
  for (const auto& op : o.ops)
    if (op != "write" && op != "read" && op != "send")
      return status{ec::invalid_argument,
                    "bench endpoint: unknown operation '" + op +
                        "' (write, read, send)"};
  auto biggest = *std::max_element(o.sizes.begin(), o.sizes.end());
  auto p = make_pair(
      o, std::min(buffer_cap, std::max<std::uint64_t>(biggest, 256 << 10)));
  if (!p.ok())
    return p.error();
  if (biggest > p->abuf.size() ||
      *std::min_element(o.sizes.begin(), o.sizes.end()) == 0)
    return status{
        ec::invalid_argument,
        fmt::format("bench endpoint: sizes must lie in [1, {}]", buffer_cap)};
  std::vector<endpoint_bench_row> rows;
  for (const auto& op : o.ops)
    for (auto size : o.sizes)
      for (int depth : o.depths) {
        auto row = measure(*p, o, op, size, depth);
        if (!row.ok())
          return row.error();
        rows.push_back(*row);
      }
  return rows;
}

} // namespace kvferry
