// The channel wrapper against the deterministic fake plugin, which refuses
// every third post with a NULL request and makes connect/accept take several
// rounds, as real plugins do.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <sys/mman.h>
#include <vector>

#include <doctest/doctest.h>

#include "channel_pair.hpp"
#include "fake_plugin.hpp"
#include "kvferry/transport/channel.hpp"

using namespace kvferry::transport;
using namespace std::chrono_literals;
using kvferry::test::fake_counter;
using kvferry::test::pattern;

namespace {
std::shared_ptr<plugin> fake() {
  ::setenv("KVFERRY_FAKE_NULL_EVERY", "3", 1);
  ::setenv("KVFERRY_FAKE_CONNECT_ROUNDS", "4", 1);
  ::setenv("KVFERRY_FAKE_MAX_RECVS", "4", 1);
  return plugin::load(kvferry::test::fake_plugin_path());
}

kvferry::test::channel_pair connect_pair(const channel_options& options) {
  return kvferry::test::connect_channel_pair(fake(), options, options, 10s);
}

// Polls both sides until `ops` completions arrived in all, or 5 s passed.
std::vector<completion> drive(send_channel& tx, recv_channel& rx, size_t ops) {
  std::vector<completion> done;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (done.size() < ops && std::chrono::steady_clock::now() < deadline) {
    tx.poll([&](const completion& c) { done.push_back(c); });
    rx.poll([&](const completion& c) { done.push_back(c); });
  }
  return done;
}
} // namespace

TEST_CASE("transfers above chunk_bytes are split into chunks, striped over "
          "comms, and arrive whole") {
  channel_options options;
  options.comms = 3;
  options.chunk_bytes = 64 << 10;
  options.peer = "test-peer";
  auto [tx, rx] = connect_pair(options);
  CHECK(tx.comm_count() == 3);

  const size_t bytes = (1 << 20) + 123;
  auto source = pattern(bytes, 7);
  std::vector<char> sink(bytes, 0);
  auto send_mr = tx.register_memory(source.data(), bytes);
  auto recv_mr = rx.register_memory(sink.data(), bytes);
  auto recv_id = rx.post_recv(sink.data(), bytes, recv_mr);
  auto send_id = tx.post_send(source.data(), bytes, send_mr);
  auto done = drive(tx, rx, 2);
  REQUIRE(done.size() == 2);
  for (auto& c : done) {
    CHECK(c.ok);
    CHECK(c.bytes == bytes);
    CHECK((c.id == recv_id || c.id == send_id));
  }
  CHECK(sink == source);
  CHECK(fake_counter("kvferry_fake_max_chunk") <= (64 << 10));
  CHECK(tx.in_flight() == 0);
  CHECK(rx.in_flight() == 0);
}

TEST_CASE(
    "NULL requests are retried from poll and many operations stay in flight") {
  channel_options options;
  options.chunk_bytes = 4096;
  options.max_inflight = 8;
  options.initial_ops = 4; // forces the op table to grow once
  auto [tx, rx] = connect_pair(options);
  long nulls_before = fake_counter("kvferry_fake_null_requests");

  const size_t ops = 200, each = 4096;
  auto source = pattern(ops * each, 3);
  std::vector<char> sink(ops * each, 0);
  auto send_mr = tx.register_memory(source.data(), source.size());
  auto recv_mr = rx.register_memory(sink.data(), sink.size());
  for (size_t i = 0; i < ops; ++i) {
    rx.post_recv(sink.data() + i * each, each, recv_mr, 0);
    tx.post_send(source.data() + i * each, each, send_mr, 0);
  }
  CHECK(tx.in_flight() == ops);
  auto done = drive(tx, rx, 2 * ops);
  CHECK(done.size() == 2 * ops);
  for (auto& c : done)
    CHECK(c.ok);
  CHECK(sink == source);
  CHECK(fake_counter("kvferry_fake_null_requests") > nulls_before);
}

TEST_CASE("a receive larger than its send reports the true size") {
  auto [tx, rx] = connect_pair({});
  auto source = pattern(600, 1);
  std::vector<char> sink(1000, 0);
  auto send_mr = tx.register_memory(source.data(), source.size());
  auto recv_mr = rx.register_memory(sink.data(), sink.size());
  auto recv_id = rx.post_recv(sink.data(), sink.size(), recv_mr);
  tx.post_send(source.data(), source.size(), send_mr);
  auto done = drive(tx, rx, 2);
  REQUIRE(done.size() == 2);
  for (auto& c : done)
    if (c.id == recv_id)
      CHECK(c.bytes == 600);
  CHECK(std::equal(source.begin(), source.end(), sink.begin()));
}

TEST_CASE("grouped receives place each send by its tag") {
  auto [tx, rx] = connect_pair({});
  std::vector<std::vector<char>> sources{pattern(100, 1), pattern(200, 2),
                                         pattern(300, 3)};
  std::vector<std::vector<char>> sinks(3, std::vector<char>(512, 0));
  std::vector<registration> send_mrs, recv_mrs;
  for (int i = 0; i < 3; ++i) {
    send_mrs.push_back(
        tx.register_memory(sources[i].data(), sources[i].size()));
    recv_mrs.push_back(rx.register_memory(sinks[i].data(), sinks[i].size()));
  }
  recv_channel::recv_buffer group[3];
  for (int i = 0; i < 3; ++i)
    group[i] = {sinks[i].data(), 512, 10 + i, &recv_mrs[i]};
  // Sent in another order than the receive lists them: tags decide.
  send_channel::send_buffer sends[3] = {
      {sources[2].data(), 300, 12, &send_mrs[2]},
      {sources[0].data(), 100, 10, &send_mrs[0]},
      {sources[1].data(), 200, 11, &send_mrs[1]},
  };
  auto recv_id = rx.post_recv_group(group, 3);
  tx.post_send_group(sends, 3);
  auto done = drive(tx, rx, 2);
  REQUIRE(done.size() == 2);
  for (auto& c : done) {
    CHECK(c.ok);
    if (c.id == recv_id)
      CHECK(c.bytes == 600);
  }
  for (int i = 0; i < 3; ++i)
    CHECK(std::equal(sources[i].begin(), sources[i].end(), sinks[i].begin()));
  CHECK_THROWS_AS(rx.post_recv_group(group, 5),
                  transport_error); // maxRecvs is 4
}

TEST_CASE("registrations and comms are released, registrations first") {
  long mrs = fake_counter("kvferry_fake_live_mrs");
  long comms = fake_counter("kvferry_fake_open_comms");
  std::vector<char> buffer(4096);
  {
    registration outlives_its_channel;
    auto [tx, rx] = connect_pair({});
    auto mr = tx.register_memory(buffer.data(), buffer.size());
    CHECK(fake_counter("kvferry_fake_live_mrs") == mrs + 1);
    CHECK_THROWS_AS(tx.post_send(buffer.data() + 100, 4096, mr),
                    transport_error);
    outlives_its_channel = rx.register_memory(buffer.data(), buffer.size());
    CHECK_THROWS_AS(tx.post_send(buffer.data(), 10, outlives_its_channel),
                    transport_error);
    // rx closes before `outlives_its_channel`: it deregisters it first.
  }
  CHECK(fake_counter("kvferry_fake_live_mrs") == mrs);
  CHECK(fake_counter("kvferry_fake_open_comms") == comms);
}

TEST_CASE("an accept nobody connects to times out naming the peer") {
  channel_options options;
  options.peer = "decode-7";
  channel_listener listener(fake(), 0, options);
  try {
    listener.accept(50ms);
    FAIL("accept returned");
  } catch (const timeout_error& e) {
    CHECK(std::string(e.what()).find("accept from decode-7") !=
          std::string::npos);
  }
}

TEST_CASE("a registration above 2^31-1 bytes is made of 1 GiB windows every "
          "512 MiB") {
  // 3 GiB of address space, untouched except for the pages the transfer uses.
  const size_t bytes = size_t{3} << 30;
  void* raw = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  REQUIRE(raw != MAP_FAILED);
  char* region = static_cast<char*>(raw);
  {
    auto [tx, rx] = connect_pair({});
    long before = fake_counter("kvferry_fake_live_mrs");
    auto send_mr = tx.register_memory(region, bytes);
    // Windows start at 0, 0.5, 1, 1.5 and 2 GiB; the last reaches the end.
    CHECK(fake_counter("kvferry_fake_live_mrs") == before + 5);
    auto recv_mr = rx.register_memory(region, bytes);
    const size_t from = (size_t{11} << 28) + 12345,
                 to = (size_t{5} << 28) + 7; // 2.75 / 1.25 GiB
    auto source = pattern(8192, 9);
    std::memcpy(region + from, source.data(), source.size());
    rx.post_recv(region + to, 8192, recv_mr);
    tx.post_send(region + from, 8192, send_mr);
    auto done = drive(tx, rx, 2);
    REQUIRE(done.size() == 2);
    for (auto& c : done)
      CHECK(c.ok);
    CHECK(std::memcmp(region + to, source.data(), source.size()) == 0);
  }
  ::munmap(raw, bytes);
}

TEST_CASE(
    "chunk sizes outside 1..512 MiB are refused when the channel is made") {
  channel_options options;
  options.chunk_bytes = max_chunk_bytes + 1;
  kvferry::test::check_send_channel_refused(fake(), options);
}

TEST_CASE(
    "against kvsock: a chunked transfer striped over 2 comms arrives whole") {
  auto net =
      plugin::load("kvsock"); // found on KVFERRY_PLUGIN_PATH (set by ctest)
  channel_options options;
  options.comms = 2;
  options.chunk_bytes = 64 << 10;
  options.peer = "kvsock-loopback";
  auto [tx, rx] =
      kvferry::test::connect_channel_pair(net, options, options, 10s);
  const size_t bytes = (3 << 20) + 777;
  auto source = pattern(bytes, 5);
  std::vector<char> sink(bytes, 0);
  {
    auto send_mr = tx.register_memory(source.data(), bytes);
    auto recv_mr = rx.register_memory(sink.data(), bytes);
    for (int round = 0; round < 3; ++round) {
      rx.post_recv(sink.data(), bytes, recv_mr);
      tx.post_send(source.data(), bytes, send_mr);
      auto done = drive(tx, rx, 2);
      REQUIRE(done.size() == 2);
      for (auto& c : done) {
        CHECK(c.ok);
        CHECK(c.bytes == bytes);
      }
      CHECK(sink == source);
      std::fill(sink.begin(), sink.end(), 0);
    }
  }
}

TEST_CASE("caller_polls: kvsock is told through kvferry's extension, a plugin "
          "without one is used as before") {
  auto net = plugin::load("kvsock");
  REQUIRE(net->ext() != nullptr); // kvferryNetExt_v1, beside the v7 table
  CHECK(std::string(net->ext()->name) == "kvsock");
  CHECK(fake()->ext() == nullptr);
  channel_options options;
  options.comms = 2;
  options.chunk_bytes = 64 << 10;
  options.peer = "kvsock-loopback";
  options.caller_polls = true;
  for (const auto& plugin : {net, fake()}) {
    CAPTURE(plugin->name());
    auto [tx, rx] =
        kvferry::test::connect_channel_pair(plugin, options, options, 10s);
    const size_t bytes = (1 << 20) + 3;
    auto source = pattern(bytes, 9);
    std::vector<char> sink(bytes, 0);
    auto send_mr = tx.register_memory(source.data(), bytes);
    auto recv_mr = rx.register_memory(sink.data(), bytes);
    rx.post_recv(sink.data(), bytes, recv_mr);
    tx.post_send(source.data(), bytes, send_mr);
    auto done = drive(tx, rx, 2);
    REQUIRE(done.size() == 2);
    CHECK(done[0].ok);
    CHECK(done[1].ok);
    CHECK(sink == source);
  }
}
