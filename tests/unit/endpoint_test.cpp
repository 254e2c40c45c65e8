// kvferry::endpoint (issue #16), two endpoints in one process over kvsock on
// host memory: one-sided write and read, two-sided send/recv, the vector
// forms and notifications, every byte checked; and bad input (malformed
// metadata and descriptors, a descriptor outside the peer's region, a wait
// that times out, a dead peer) gives an error naming the cause and leaves
// the endpoint usable; the path choice (CUDA IPC or the plugin) and the
// per-path counters; senders that go right after their send.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "kvferry/endpoint.hpp"
#include "kvferry/one_sided_plan.hpp"
#include "test_pki.hpp"

// The path choice (private to engine/): pure functions.
#include "../../engine/src/endpoint_path.hpp"

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

constexpr auto limit = std::chrono::milliseconds(20000);

std::vector<std::uint8_t> pattern(std::size_t n, unsigned seed) {
  std::vector<std::uint8_t> out(n);
  for (std::size_t i = 0; i < n; ++i)
    out[i] = static_cast<std::uint8_t>(i * 131 + seed * 71 + i / 251);
  return out;
}

endpoint make(const std::string& name) {
  endpoint_options o;
  o.name = name;
  o.transfer_timeout = std::chrono::milliseconds(10000);
  auto ep = endpoint::create(o);
  REQUIRE_MESSAGE(ep.ok(), ep.error().message());
  return std::move(ep).value();
}

bool says(const status& s, const std::string& what) {
  return s.message().find(what) != std::string::npos;
}

// `a` connects to `b`: a's connection, b's.
std::pair<conn_id, conn_id> link(endpoint& a, endpoint& b) {
  auto c = a.connect(b.metadata());
  REQUIRE_MESSAGE(c.ok(), c.error().message());
  auto d = b.accept(limit);
  REQUIRE_MESSAGE(d.ok(), d.error().message());
  return {*c, *d};
}

// Two connected endpoints, each with a registered buffer.
struct pair {
  endpoint a = make("ep-test-a");
  endpoint b = make("ep-test-b");
  conn_id ab = 0, ba = 0;
  std::vector<std::uint8_t> abuf = pattern(256 << 10, 1);
  std::vector<std::uint8_t> bbuf = std::vector<std::uint8_t>(256 << 10, 0x5a);
  region_id ar = 0, br = 0;

  pair() {
    auto c = a.connect(b.metadata());
    REQUIRE_MESSAGE(c.ok(), c.error().message());
    ab = *c;
    auto d = b.accept(limit);
    REQUIRE_MESSAGE(d.ok(), d.error().message());
    ba = *d;
    auto r = a.reg(abuf.data(), abuf.size());
    REQUIRE_MESSAGE(r.ok(), r.error().message());
    ar = *r;
    r = b.reg(bbuf.data(), bbuf.size());
    REQUIRE_MESSAGE(r.ok(), r.error().message());
    br = *r;
  }

  std::uint64_t done(endpoint& ep, result<xfer_id> id) {
    REQUIRE_MESSAGE(id.ok(), id.error().message());
    auto bytes = ep.wait(*id, limit);
    REQUIRE_MESSAGE(bytes.ok(), bytes.error().message());
    return *bytes;
  }
};

} // namespace

TEST_CASE("metadata and descriptors round-trip; malformed ones are named") {
  endpoint_metadata m;
  m.name = "ep-x";
  m.instance = 42;
  m.address = "127.0.0.1";
  m.port = 4242;
  m.gpu = 3;
  m.plugin = "kvsock";
  m.host_id = "h/boot";
  auto bytes = m.to_bytes();
  auto back = endpoint_metadata::parse(bytes.data(), bytes.size());
  REQUIRE(back.ok());
  CHECK(back->name == "ep-x");
  CHECK(back->instance == 42);
  CHECK(back->port == 4242);
  CHECK(back->gpu == 3);
  CHECK(back->host_id == "h/boot");

  auto bad = bytes;
  bad[0] = 'X';
  auto r = endpoint_metadata::parse(bad.data(), bad.size());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ec::invalid_argument);
  CHECK(says(r.error(), "bytes 0-3 are not the magic 'KVFM'"));
  r = endpoint_metadata::parse(bytes.data(), bytes.size() - 3);
  REQUIRE_FALSE(r.ok());
  CHECK(says(r.error(), "field 'host_id' at byte"));
  bad = bytes;
  bad[4] = 9;
  r = endpoint_metadata::parse(bad.data(), bad.size());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code() == ec::mismatch);
  CHECK(says(r.error(), "bytes 4-5: version 9"));
  bad = bytes;
  bad.push_back(0);
  r = endpoint_metadata::parse(bad.data(), bad.size());
  REQUIRE_FALSE(r.ok());
  CHECK(says(r.error(), "1 unexpected bytes after the last field"));

  descriptor d{7, 2, 4096, 1024, 512};
  auto blob = d.to_bytes();
  CHECK(blob.size() == descriptor::wire_bytes);
  auto e = descriptor::parse(blob.data(), blob.size());
  REQUIRE(e.ok());
  CHECK(e->owner == 7);
  CHECK(e->region == 2);
  CHECK(e->offset == 1024);
  CHECK(e->size == 512);
  auto s = e->sub(256, 256);
  REQUIRE(s.ok());
  CHECK(s->offset == 1280);
  CHECK_FALSE(e->sub(256, 257).ok());
  CHECK_FALSE(descriptor::parse(blob.data(), 47).ok());
  d.size = 4000; // leaves the region
  blob = d.to_bytes();
  auto out = descriptor::parse(blob.data(), blob.size());
  REQUIRE_FALSE(out.ok());
  CHECK(says(out.error(), "leaves its region of 4096 bytes"));
}

TEST_CASE("one-sided write and read, vector forms, every byte checked") {
  pair p;
  // b advertises its whole buffer; a writes three pieces of its own into
  // three places of it (one descriptor, narrowed per piece).
  auto whole = p.b.advertise(p.br, 0, p.bbuf.size());
  REQUIRE(whole.ok());
  auto blob = whole->to_bytes(); // as it travels out of band
  auto remote = descriptor::parse(blob.data(), blob.size()).value();
  std::vector<slice> local{
      {p.ar, 0, 1000}, {p.ar, 4096, 65536}, {p.ar, 100000, 1}};
  std::vector<descriptor> there{remote.sub(200000, 1000).value(),
                                remote.sub(0, 65536).value(),
                                remote.sub(262143, 1).value()};
  CHECK(p.done(p.a, p.a.write(p.ab, local, there)) == 66537);
  auto expect = std::vector<std::uint8_t>(256 << 10, 0x5a);
  auto copy = [&](std::size_t from, std::size_t to, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
      expect[to + i] = p.abuf[from + i];
  };
  copy(0, 200000, 1000);
  copy(4096, 0, 65536);
  copy(100000, 262143, 1);
  CHECK(p.bbuf == expect); // done means landed

  // a reads back from b into a fresh region of its own.
  std::vector<std::uint8_t> back(70000, 0);
  auto rr = p.a.reg(back.data(), back.size());
  REQUIRE(rr.ok());
  CHECK(p.done(p.a, p.a.read(p.ab, {{*rr, 10, 65536}},
                             {remote.sub(0, 65536).value()})) == 65536);
  CHECK(std::equal(back.begin() + 10, back.begin() + 10 + 65536,
                   p.abuf.begin() + 4096));
  CHECK(back[9] == 0);
  CHECK(back[10 + 65536] == 0);

  // The other direction on the same connection: b writes into a.
  auto mine = p.a.advertise(*rr, 0, back.size()).value();
  auto id = p.b.write(p.ba, {{p.br, 0, 70000}}, {mine});
  CHECK(p.done(p.b, id) == 70000);
  CHECK(std::equal(back.begin(), back.end(), p.bbuf.begin()));

  // 16 in flight at once, polled.
  std::vector<xfer_id> ids;
  for (std::uint64_t k = 0; k < 16; ++k) {
    auto w = p.a.write(p.ab, {{p.ar, k * 4096, 4096}},
                       {remote.sub(k * 4096, 4096).value()});
    REQUIRE(w.ok());
    ids.push_back(*w);
  }
  for (auto i : ids)
    CHECK(p.a.wait(i, limit).ok());
  CHECK(std::equal(p.bbuf.begin(), p.bbuf.begin() + 65536, p.abuf.begin()));
  auto gone = p.a.poll(ids[0]);
  REQUIRE_FALSE(gone.ok());
  CHECK(gone.error().code() == ec::not_found);

  // Host memory: every transfer took the plugin, counted per path.
  auto stats = p.a.stats();
  CHECK(stats.plugin_transfers == 18); // a write, a read, 16 writes by a
  CHECK(stats.plugin_bytes == 66537 + 65536 + 16 * 4096);
  CHECK(stats.ipc_transfers == 0);
  CHECK(stats.ipc_bytes == 0);
  auto w = p.a.write(p.ab, {{p.ar, 0, 10}}, {remote.sub(0, 10).value()});
  REQUIRE(w.ok());
  std::optional<transfer_path> path;
  auto until = std::chrono::steady_clock::now() + limit;
  while (!path && std::chrono::steady_clock::now() < until) {
    auto known = p.a.path(*w);
    REQUIRE(known.ok());
    path = *known;
  }
  CHECK(path == transfer_path::plugin);
  CHECK(p.done(p.a, w) == 10);
  CHECK(p.a.path(*w).error().code() == ec::not_found);
}

TEST_CASE("the path: CUDA IPC between GPU tables of one host, else the "
          "plugin") {
  using engine_detail::path_between;
  proto::endpoint a, b; // both export their tables over CUDA IPC
  a.host_id = b.host_id = "host-1";
  a.ipc_handle = "a's table";
  b.ipc_handle = "b's table";
  CHECK(path_between(a, b, false) == transfer_path::cuda_ipc);
  CHECK(path_between(b, a, false) == transfer_path::cuda_ipc);
  // One process: CUDA IPC cannot open its own handles.
  CHECK(path_between(a, b, true) == transfer_path::plugin);
  auto host = b; // host memory somewhere in its table: nothing exported
  host.ipc_handle.clear();
  CHECK(path_between(a, host, false) == transfer_path::plugin);
  CHECK(path_between(host, a, false) == transfer_path::plugin);
  auto far = b;
  far.host_id = "host-2";
  CHECK(path_between(a, far, false) == transfer_path::plugin);
  auto unknown_a = a, unknown_b = b; // no host id: never IPC
  unknown_a.host_id.clear();
  unknown_b.host_id.clear();
  CHECK(path_between(unknown_a, unknown_b, false) == transfer_path::plugin);
}

TEST_CASE("an order names the peer's table; its IPC handle only for the "
          "path reported") {
  using engine_detail::order_peer;
  using engine_detail::sizes_covering;
  proto::endpoint ep;
  ep.ipc_handle = "table";
  ep.region_bytes = 4096;                // the placeholder
  ep.more_region_sizes = {1000, 0, 500}; // region 2 deregistered
  auto path = transfer_path::cuda_ipc;
  auto to = order_peer(ep, {0, 1000, 0, 20}, path);
  CHECK(path == transfer_path::cuda_ipc);
  CHECK(to.ipc_handle == "table");
  CHECK(proto::region_sizes_of(to) ==
        std::vector<std::uint64_t>{4096, 1000, 0, 500});
  // A descriptor of a region announced later (it came out of band first):
  // the plugin, the table grown for the sender's checks.
  to = order_peer(ep, {0, 0, 0, 0, 64}, path);
  CHECK(path == transfer_path::plugin);
  CHECK(to.ipc_handle.empty());
  CHECK(proto::region_sizes_of(to) ==
        std::vector<std::uint64_t>{4096, 1000, 0, 500, 64});
  path = transfer_path::cuda_ipc;
  to = order_peer(ep, {0, 1001}, path); // larger than announced
  CHECK(path == transfer_path::plugin);
  CHECK(proto::region_sizes_of(to)[1] == 1001);
  path = transfer_path::plugin; // the plugin chosen: the handle goes
  CHECK(order_peer(ep, {}, path).ipc_handle.empty());
  // What an order's extents reach, per side.
  std::vector<extent> x{{table_offset(1, 10), table_offset(3, 0), 90},
                        {table_offset(1, 0), table_offset(3, 200), 5}};
  CHECK(sizes_covering(x, extent_side::source) ==
        std::vector<std::uint64_t>{0, 100});
  CHECK(sizes_covering(x, extent_side::destination) ==
        std::vector<std::uint64_t>{0, 0, 0, 205});
}

TEST_CASE("two-sided send and recv in order, with notifications") {
  pair p;
  // Two receives posted on b, then two sends from a (scattered sources):
  // the k-th send fills the k-th receive.
  auto r1 = p.b.recv(p.ba, {{p.br, 0, 3000}, {p.br, 50000, 5000}});
  auto r2 = p.b.recv(p.ba, {{p.br, 100000, 20000}});
  REQUIRE(r1.ok());
  REQUIRE(r2.ok());
  auto s1 = p.a.send(p.ab, {{p.ar, 0, 4000}, {p.ar, 10000, 4000}});
  auto s2 = p.a.send(p.ab, {{p.ar, 20000, 12345}});
  CHECK(p.done(p.a, s1) == 8000);
  CHECK(p.done(p.a, s2) == 12345);
  CHECK(p.done(p.b, r1) == 8000);
  CHECK(p.done(p.b, r2) == 12345);
  std::vector<std::uint8_t> sent(p.abuf.begin(), p.abuf.begin() + 4000);
  sent.insert(sent.end(), p.abuf.begin() + 10000, p.abuf.begin() + 14000);
  CHECK(std::equal(sent.begin(), sent.begin() + 3000, p.bbuf.begin()));
  CHECK(std::equal(sent.begin() + 3000, sent.end(), p.bbuf.begin() + 50000));
  CHECK(std::equal(p.abuf.begin() + 20000, p.abuf.begin() + 32345,
                   p.bbuf.begin() + 100000));
  CHECK(p.bbuf[100000 + 12345] == 0x5a); // the rest of the receive untouched

  // A send posted before its receive waits for it.
  auto s3 = p.b.send(p.ba, {{p.br, 0, 777}});
  REQUIRE(s3.ok());
  auto r3 = p.a.recv(p.ab, {{p.ar, 200000, 1000}});
  CHECK(p.done(p.a, r3) == 777);
  CHECK(p.done(p.b, s3) == 777);
  CHECK(std::equal(p.bbuf.begin(), p.bbuf.begin() + 777,
                   p.abuf.begin() + 200000));

  // Notifications, in order, after the transfer they follow.
  std::vector<std::uint8_t> note{'h', 'i'};
  CHECK(p.a.notify(p.ab, note).ok());
  CHECK(p.a.notify(p.ab, std::vector<std::uint8_t>{'2'}).ok());
  std::vector<notification> got;
  auto until = std::chrono::steady_clock::now() + limit;
  while (got.size() < 2 && std::chrono::steady_clock::now() < until) {
    auto more = p.b.take_notifications();
    got.insert(got.end(), more.begin(), more.end());
  }
  REQUIRE(got.size() == 2);
  CHECK(got[0].conn == p.ba);
  CHECK(got[0].bytes == note);
  CHECK(got[1].bytes == std::vector<std::uint8_t>{'2'});
  auto big = p.a.notify(
      p.ab, std::vector<std::uint8_t>(endpoint::max_notification_bytes + 1));
  CHECK(big.code() == ec::invalid_argument);
}

TEST_CASE("bad input gives a clear error and leaves the endpoint usable") {
  pair p;
  auto whole = p.b.advertise(p.br, 0, p.bbuf.size()).value();

  SUBCASE("malformed metadata") {
    std::vector<std::uint8_t> junk{'K', 'V', 'F', 'M', 1, 0, 3};
    auto c = p.a.connect(junk);
    REQUIRE_FALSE(c.ok());
    CHECK(says(c.error(), "truncated at byte 6 in field 'instance'"));
  }
  SUBCASE("arguments checked before anything moves") {
    CHECK(p.a.write(p.ab, {{p.ar, 0, 10}}, {whole.sub(0, 11).value()})
              .error()
              .code() == ec::invalid_argument);
    CHECK(p.a.write(p.ab, {{p.ar, p.abuf.size() - 5, 10}},
                    {whole.sub(0, 10).value()})
              .error()
              .code() == ec::invalid_extent);
    CHECK(p.a.write(99, {{p.ar, 0, 10}}, {whole.sub(0, 10).value()})
              .error()
              .code() == ec::not_found);
    auto foreign = whole;
    foreign.owner ^= 1;
    auto w = p.a.write(p.ab, {{p.ar, 0, 10}}, {foreign.sub(0, 10).value()});
    REQUIRE_FALSE(w.ok());
    CHECK(says(w.error(), "belongs to another endpoint"));
    CHECK(p.a.advertise(p.ar, 0, p.abuf.size() + 1).error().code() ==
          ec::invalid_extent);
  }
  SUBCASE("a descriptor outside the peer's region: the receiver refuses") {
    // A forged descriptor that claims a larger region: the sender's check
    // passes, the receiver's own table refuses, nothing is written.
    auto forged = whole;
    forged.region_bytes = 1 << 20;
    forged.offset = 300000;
    forged.size = 4096;
    auto w = p.a.write(p.ab, {{p.ar, 0, 4096}}, {forged});
    REQUIRE(w.ok());
    auto r = p.a.wait(*w, limit);
    REQUIRE_FALSE(r.ok());
    CHECK(says(r.error(), "leaves"));
    CHECK(std::all_of(p.bbuf.begin(), p.bbuf.end(),
                      [](std::uint8_t x) { return x == 0x5a; }));
    // A region the peer deregistered is refused the same way.
    std::vector<std::uint8_t> spare(4096, 1);
    auto sr = p.b.reg(spare.data(), spare.size()).value();
    auto old = p.b.advertise(sr, 0, 4096).value();
    CHECK(p.b.dereg(sr).ok());
    auto late = p.a.write(p.ab, {{p.ar, 0, 4096}}, {old});
    REQUIRE(late.ok());
    auto lr = p.a.wait(*late, limit);
    REQUIRE_FALSE(lr.ok());
    CHECK(says(lr.error(), "region"));
    CHECK(spare == std::vector<std::uint8_t>(4096, 1));
  }
  SUBCASE("a wait that times out leaves the transfer pending") {
    auto r = p.b.recv(p.ba, {{p.br, 0, 100}});
    REQUIRE(r.ok());
    auto w = p.b.wait(*r, 50ms);
    REQUIRE_FALSE(w.ok());
    CHECK(w.error().code() == ec::timeout);
    CHECK(says(w.error(), "still in flight"));
    auto still = p.b.poll(*r);
    REQUIRE(still.ok());
    CHECK_FALSE(still->has_value());
    CHECK(p.done(p.a, p.a.send(p.ab, {{p.ar, 0, 100}})) == 100);
    CHECK(p.done(p.b, r) == 100);
    auto a = p.a.accept(10ms);
    CHECK(a.error().code() == ec::timeout);
  }
  // After any of these: a normal write still works.
  CHECK(p.done(p.a, p.a.write(p.ab, {{p.ar, 0, 8192}},
                              {whole.sub(8192, 8192).value()})) == 8192);
  CHECK(
      std::equal(p.abuf.begin(), p.abuf.begin() + 8192, p.bbuf.begin() + 8192));
}

TEST_CASE("a dead peer fails what waits on it, naming it") {
  auto a = make("ep-test-live");
  std::optional<endpoint> b{make("ep-test-dying")};
  auto c = a.connect(b->metadata());
  REQUIRE(c.ok());
  REQUIRE(b->accept(limit).ok());
  std::vector<std::uint8_t> buf(4096, 3);
  auto r = a.reg(buf.data(), buf.size()).value();
  auto pending = a.recv(*c, {{r, 0, 4096}});
  REQUIRE(pending.ok());
  b.reset(); // the peer goes away
  auto w = a.wait(*pending, limit);
  REQUIRE_FALSE(w.ok());
  CHECK(w.error().code() == ec::peer_down);
  CHECK(says(w.error(), "ep-test-dying"));
  auto later = a.send(*c, {{r, 0, 10}});
  REQUIRE_FALSE(later.ok());
  CHECK(later.error().code() == ec::peer_down);
  // Still usable: a new peer connects and moves bytes.
  auto d = make("ep-test-new");
  auto c2 = d.connect(a.metadata());
  REQUIRE(c2.ok());
  auto back = a.accept(limit);
  REQUIRE(back.ok());
  std::vector<std::uint8_t> dst(4096, 0);
  auto dr = d.reg(dst.data(), dst.size()).value();
  auto desc = d.advertise(dr, 0, 4096).value();
  auto w2 = a.write(*back, {{r, 0, 4096}}, {desc});
  REQUIRE(w2.ok());
  REQUIRE(a.wait(*w2, limit).ok());
  CHECK(dst == buf);
}

TEST_CASE("an endpoint may go as soon as its send completed") {
  // A send is done once the peer's receive finished (its receipt), so the
  // sender's teardown can never overtake its last bytes: no goodbye needed.
  auto b = make("ep-test-stays");
  std::vector<std::uint8_t> inbox(64 << 10, 0);
  auto ir = b.reg(inbox.data(), inbox.size()).value();
  for (unsigned round = 0; round < 20; ++round) {
    auto out = pattern(inbox.size() - round * 1000, round);
    xfer_id recv_id = 0;
    {
      auto a = make("ep-test-goes-" + std::to_string(round));
      auto [c, ba] = link(a, b);
      auto r = b.recv(ba, {{ir, 0, inbox.size()}});
      REQUIRE(r.ok());
      recv_id = *r;
      auto ar = a.reg(out.data(), out.size()).value();
      auto s = a.send(c, {{ar, 0, out.size()}});
      REQUIRE(s.ok());
      auto sent = a.wait(*s, limit);
      REQUIRE_MESSAGE(sent.ok(), sent.error().message());
    } // `a` destroyed at once
    auto got = b.wait(recv_id, limit);
    REQUIRE_MESSAGE(got.ok(), "round ", round, ": ", got.error().message());
    CHECK(*got == out.size());
    CHECK(std::equal(out.begin(), out.end(), inbox.begin()));
  }
}

TEST_CASE("a receiver may go as soon as its receive completed: the send "
          "still succeeds") {
  // The receipt that completes the send leaves the receiver's control actor
  // in a batch; its teardown sends what piled up first, so the sender hears
  // that its bytes landed, not that the peer is gone.
  auto a = make("ep-test-sender-stays");
  auto out = pattern(64 << 10, 3);
  auto ar = a.reg(out.data(), out.size()).value();
  for (unsigned round = 0; round < 20; ++round) {
    xfer_id send_id = 0;
    {
      auto b = make("ep-test-receiver-goes-" + std::to_string(round));
      std::vector<std::uint8_t> inbox(out.size(), 0);
      auto ir = b.reg(inbox.data(), inbox.size()).value();
      auto [c, ba] = link(a, b);
      auto r = b.recv(ba, {{ir, 0, inbox.size()}});
      REQUIRE(r.ok());
      auto s = a.send(c, {{ar, 0, out.size()}});
      REQUIRE(s.ok());
      send_id = *s;
      auto got = b.wait(*r, limit);
      REQUIRE_MESSAGE(got.ok(), got.error().message());
      CHECK(std::equal(out.begin(), out.end(), inbox.begin()));
    } // `b` destroyed at once
    auto sent = a.wait(send_id, limit);
    REQUIRE_MESSAGE(sent.ok(), "round ", round, ": ", sent.error().message());
    CHECK(*sent == out.size());
  }
}

TEST_CASE("mutual TLS on the control port") {
  test::test_pki pki({"ep-tls-a", "ep-tls-b"});
  auto secure = [&](const std::string& name) {
    endpoint_options o;
    o.name = name;
    o.tls_dir = pki.dir;
    return endpoint::create(o);
  };
  auto a = secure("ep-tls-a");
  REQUIRE_MESSAGE(a.ok(), a.error().message());
  auto b = secure("ep-tls-b");
  REQUIRE_MESSAGE(b.ok(), b.error().message());
  auto ab = a->connect(b->metadata());
  REQUIRE_MESSAGE(ab.ok(), ab.error().message());
  auto ba = b->accept(limit);
  REQUIRE(ba.ok());
  std::vector<std::uint8_t> src = pattern(100000, 9), dst(100000, 0);
  auto sr = a->reg(src.data(), src.size()).value();
  auto dr = b->reg(dst.data(), dst.size()).value();
  auto w = a->write(*ab, {{sr, 0, src.size()}},
                    {b->advertise(dr, 0, dst.size()).value()});
  REQUIRE(w.ok());
  REQUIRE(a->wait(*w, limit).ok());
  CHECK(dst == src);
  // A peer without a certificate of the CA does not get in; the TLS
  // endpoints stay usable.
  auto plain = make("ep-tls-plain");
  auto refused = plain.connect(b->metadata());
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.error().code() == ec::unreachable);
  auto again = a->write(*ab, {{sr, 0, 10}}, {b->advertise(dr, 0, 10).value()});
  REQUIRE(again.ok());
  CHECK(a->wait(*again, limit).ok());
  // No certificate for this name: create says which file.
  auto nobody = secure("ep-tls-nobody");
  REQUIRE_FALSE(nobody.ok());
  CHECK(says(nobody.error(), "ep-tls-nobody"));
}

TEST_CASE("a receive that failed at its deadline does not take a later send") {
  auto a = make("ep-test-sender");
  endpoint_options o;
  o.name = "ep-test-impatient";
  o.transfer_timeout = std::chrono::milliseconds(300);
  auto b = endpoint::create(o);
  REQUIRE_MESSAGE(b.ok(), b.error().message());
  auto ab = a.connect(b->metadata());
  REQUIRE(ab.ok());
  auto ba = b->accept(limit);
  REQUIRE(ba.ok());
  auto src = pattern(100, 4);
  std::vector<std::uint8_t> dst(100, 0);
  auto ar = a.reg(src.data(), src.size()).value();
  auto br = b->reg(dst.data(), dst.size()).value();
  auto r1 = b->recv(*ba, {{br, 0, 100}});
  REQUIRE(r1.ok());
  auto failed = b->wait(*r1, limit);
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.error().code() == ec::timeout);
  // The failure's receipt travels ahead of this notification.
  REQUIRE(b->notify(*ba, std::vector<std::uint8_t>{'x'}).ok());
  bool heard = false;
  auto until = std::chrono::steady_clock::now() + limit;
  while (!heard && std::chrono::steady_clock::now() < until)
    heard = !a.take_notifications().empty();
  REQUIRE(heard);
  auto s = a.send(*ab, {{ar, 0, 100}});
  REQUIRE(s.ok());
  auto r2 = b->recv(*ba, {{br, 0, 100}});
  REQUIRE(r2.ok());
  auto sent = a.wait(*s, limit);
  REQUIRE_MESSAGE(sent.ok(), sent.error().message());
  auto got = b->wait(*r2, limit);
  REQUIRE_MESSAGE(got.ok(), got.error().message());
  CHECK(*got == 100);
  CHECK(dst == src);
}

// The caller's pass of a one-sided vector call (one_sided_plan.hpp): the
// endpoint cuts a large call into parts on a crew; whatever the cut, the
// extents, the byte total and the first pair at fault are those of one pass.
TEST_CASE("a vector call's pass gives the same extents in parts and names its "
          "first bad pair, whichever part holds it") {
  using namespace kvferry;
  constexpr std::size_t n = 40000; // >= min_crew_pairs: cut into parts
  one_sided_call call;
  call.peer_instance = 9;
  call.conn = 3;
  call.peer_name = "b";
  call.local = {4096, std::uint64_t{4096} * n, 0, 8192}; // region 2 removed
  std::vector<slice> local(n);
  std::vector<descriptor> remote(n);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t size = 16 + i % 4000;
    local[i] = slice{1, (n - 1 - i) * 4096, size};
    remote[i] = descriptor{9, 1 + i % 3, 1 << 30, i * 4096, size};
    total += size;
  }
  transport::plan_crew crew{3};
  std::vector<one_sided_part> parts(crew.size());
  auto run = [&](transport::plan_crew* on, one_sided_plan& out) {
    out.extents.assign(7, transport::copy_extent{1, 1, 1}); // stale contents
    return plan_one_sided(call, local, remote, out, on, parts.data());
  };
  for (bool write : {true, false}) {
    call.write = write;
    one_sided_plan alone, cut;
    REQUIRE(run(nullptr, alone).ok());
    REQUIRE(run(&crew, cut).ok());
    REQUIRE(alone.extents.size() == n);
    CHECK(alone.extents == cut.extents);
    CHECK(alone.bytes == total);
    CHECK(cut.bytes == total);
    const std::vector<std::uint64_t> named{0, 1 << 30, 1 << 30, 1 << 30};
    CHECK(alone.remote_sizes == named);
    CHECK(cut.remote_sizes == named);
    const auto& e = alone.extents[5];
    const auto here = (std::uint64_t{1} << 40) + (n - 6) * 4096;
    const auto there = ((1 + std::uint64_t{5} % 3) << 40) + 5 * 4096;
    CHECK(e == (write ? transport::copy_extent{here, there, 21}
                      : transport::copy_extent{there, here, 21}));
  }
  call.write = true;
  auto refused = [&](transport::plan_crew* on) {
    one_sided_plan out;
    auto why = run(on, out);
    REQUIRE_FALSE(why.ok());
    return why;
  };
  // Faults in the third and fourth parts of four: the third's is named.
  local[35000].region = 2;                           // removed
  local[25000].offset = std::uint64_t{4096} * n - 8; // leaves region 1
  for (auto* on : {static_cast<transport::plan_crew*>(nullptr), &crew}) {
    auto why = refused(on);
    CHECK(why.code() == ec::invalid_extent);
    CHECK(why.reason() == "write: local slice #25000 (offset 163839992, 1016 "
                          "bytes) leaves region 1 of 163840000 bytes");
  }
  local[25000].offset = 0;
  for (auto* on : {static_cast<transport::plan_crew*>(nullptr), &crew}) {
    auto why = refused(on);
    CHECK(why.code() == ec::not_found);
    CHECK(why.reason() == "write: local slice #35000: no registered region 2");
  }
  local[35000].region = 7; // past the table
  CHECK(refused(&crew).reason() ==
        "write: local slice #35000: no registered region 7");
  local[35000].region = 0; // the placeholder is no caller's region
  CHECK(refused(&crew).code() == ec::not_found);
  local[35000].region = 1;
  remote[39999].size += 1;
  CHECK(refused(&crew).reason() ==
        "write: local slice #39999 has 4015 bytes, its descriptor 4016");
  remote[39999].size -= 1;
  remote[20].owner = 8;
  CHECK(refused(&crew).reason() ==
        "write: descriptor #20 belongs to another endpoint than connection 3 "
        "('b')");
}

// The caller's pass that packs (pack_one_sided, issue #16): whatever the
// cut, its plan is the one transport::pack_virtual_plan packs from
// plan_one_sided's list, to the byte, and its refusals are plan_one_sided's.
TEST_CASE("a vector call packed by the caller's pass is the virtual plan of "
          "its extents, in parts or not, and names its first bad pair") {
  using namespace kvferry;
  constexpr std::size_t n = 40000; // >= min_crew_pairs: cut into parts
  constexpr std::uint32_t item_bytes = 8192;
  one_sided_call call;
  call.peer_instance = 9;
  call.conn = 3;
  call.peer_name = "b";
  call.local = {4096, std::uint64_t{4096} * n, 0, 8192}; // region 2 removed
  const std::vector<std::uint64_t> peer{4096, 1 << 30, 1 << 30, 1 << 30};
  std::vector<slice> local(n);
  std::vector<descriptor> remote(n);
  // Runs of neighbours on both sides (they coalesce, up to a change of the
  // peer's region), or every block scattered (nothing coalesces).
  auto lay_out = [&](bool runs) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t slot = runs && i % 7 != 0 ? i : (i * 7919) % n;
      local[i] = slice{1, slot * 4096, 4096};
      remote[i] = descriptor{9, 1 + (i / 1000) % 3, 1 << 30, slot * 4096, 4096};
    }
  };
  transport::plan_crew crew{3};
  std::vector<one_sided_part> parts(crew.size());
  std::vector<transport::packed_part> packs(crew.size());
  const std::size_t words = (transport::packed_plan_bytes(n) + 7) / 8;
  auto pack = [&](transport::plan_crew* on, std::vector<std::uint64_t>& buffer,
                  one_sided_pack& out) {
    buffer.assign(words, 0xfeed); // stale contents
    return pack_one_sided(call, local, remote, item_bytes, buffer.data(), out,
                          on, parts.data(), packs.data());
  };
  for (bool runs : {true, false})
    for (bool write : {true, false}) {
      CAPTURE(runs);
      CAPTURE(write);
      lay_out(runs);
      call.write = write;
      one_sided_plan listed;
      REQUIRE(plan_one_sided(call, local, remote, listed, nullptr, parts.data())
                  .ok());
      const auto& here = call.local;
      const transport::region_layout mine{nullptr, here.data(), here.size(),
                                          40},
          theirs{nullptr, peer.data(), peer.size(), 40};
      std::vector<std::uint64_t> expected(words);
      const auto size = transport::pack_virtual_plan(
          listed.extents, item_bytes, write ? mine : theirs,
          write ? theirs : mine, expected.data());
      CHECK((size.extents < n) == runs);
      for (auto* on : {static_cast<transport::plan_crew*>(nullptr), &crew}) {
        std::vector<std::uint64_t> buffer;
        one_sided_pack out;
        REQUIRE(pack(on, buffer, out).ok());
        CHECK(out.size.extents == size.extents);
        CHECK(out.size.items == size.items);
        CHECK(out.bytes == listed.bytes);
        CHECK(out.size.copied == listed.bytes);
        CHECK(out.remote_sizes == listed.remote_sizes);
        const auto* got = reinterpret_cast<const std::uint8_t*>(buffer.data());
        const auto* want =
            reinterpret_cast<const std::uint8_t*>(expected.data());
        CHECK(std::equal(got, got + size.bytes(), want));
      }
    }
  call.write = true;
  lay_out(false);
  auto refused = [&](transport::plan_crew* on) {
    std::vector<std::uint64_t> buffer;
    one_sided_pack out;
    auto why = pack(on, buffer, out);
    REQUIRE_FALSE(why.ok());
    one_sided_plan listed; // plan_one_sided refuses the same pair alike
    const auto same =
        plan_one_sided(call, local, remote, listed, on, parts.data());
    CHECK(same.code() == why.code());
    CHECK(same.reason() == why.reason());
    return why;
  };
  local[35000].region = 2;                           // removed
  local[25000].offset = std::uint64_t{4096} * n - 8; // leaves region 1
  for (auto* on : {static_cast<transport::plan_crew*>(nullptr), &crew}) {
    auto why = refused(on);
    CHECK(why.code() == ec::invalid_extent);
    CHECK(why.reason() == "write: local slice #25000 (offset 163839992, 4096 "
                          "bytes) leaves region 1 of 163840000 bytes");
  }
  local[25000].offset = 0;
  local[35000].region = 1;
  remote[30000].offset = (1 << 30) - 100; // leaves the region advertised
  for (auto* on : {static_cast<transport::plan_crew*>(nullptr), &crew}) {
    auto why = refused(on);
    CHECK(why.code() == ec::invalid_extent);
    CHECK(why.reason() == "write: descriptor #30000 (offset 1073741724, 4096 "
                          "bytes) leaves the peer's region 1 of 1073741824 "
                          "bytes");
  }
}
