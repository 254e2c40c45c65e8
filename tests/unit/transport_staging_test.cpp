// Staging through pinned bounce slots (channel.hpp), without a GPU: memory
// registered as NCCL_PTR_CUDA on the fake plugin, whose ptrSupport is HOST
// only (its regMr refuses CUDA), with host copiers standing in for CUDA: the
// library's memcpy copier, and a test copier whose copies complete late, in a
// random order, or fail. The fake plugin matches by posting order, so any
// reordering by the channel shows up as wrong bytes.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
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
  ::setenv("KVFERRY_FAKE_NULL_EVERY", "3",
           1); // read once, at the plugin's init
  ::setenv("KVFERRY_FAKE_CONNECT_ROUNDS", "2", 1);
  return plugin::load(kvferry::test::fake_plugin_path());
}

using pair_of_channels = kvferry::test::channel_pair;

pair_of_channels connect_pair(std::shared_ptr<plugin> net,
                              const channel_options& tx_options,
                              const channel_options& rx_options) {
  return kvferry::test::connect_channel_pair(net, tx_options, rx_options, 10s);
}

pair_of_channels connect_fake(const channel_options& tx_options,
                              const channel_options& rx_options) {
  return connect_pair(fake(), tx_options, rx_options);
}

struct completions {
  std::vector<completion> sent, received;
  std::map<op_id, std::string>
      errors; // completion::error is valid in the callback only
};

// Polls both sides until `sends` and `receives` completions arrived, or 10 s.
completions drive(send_channel& tx, recv_channel& rx, size_t sends,
                  size_t receives) {
  completions out;
  auto keep = [&](std::vector<completion>& into, const completion& c) {
    into.push_back(c);
    if (c.error)
      out.errors[c.id] = c.error;
  };
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while ((out.sent.size() < sends || out.received.size() < receives) &&
         std::chrono::steady_clock::now() < deadline) {
    tx.poll([&](const completion& c) { keep(out.sent, c); });
    rx.poll([&](const completion& c) { keep(out.received, c); });
  }
  return out;
}

std::string error_of(const completions& all, op_id id) {
  auto it = all.errors.find(id);
  return it == all.errors.end() ? "(no error)" : it->second;
}

bool ok_of(const completions& all, op_id id) {
  for (auto* list : {&all.sent, &all.received})
    for (auto& c : *list)
      if (c.id == id)
        return c.ok;
  FAIL("no completion for op ", id);
  return false;
}

// A patterned source and a zeroed sink of one size, registered on each side
// (the source as CUDA memory): what most cases move.
struct registered_buffers {
  std::vector<char> source, sink;
  registration send_mr, recv_mr;
};

registered_buffers register_buffers(send_channel& tx, recv_channel& rx,
                                    size_t bytes, int seed,
                                    int recv_type = NCCL_PTR_CUDA) {
  registered_buffers b{
      pattern(bytes, seed), std::vector<char>(bytes, 0), {}, {}};
  b.send_mr = tx.register_memory(b.source.data(), bytes, NCCL_PTR_CUDA);
  b.recv_mr = rx.register_memory(b.sink.data(), bytes, recv_type);
  return b;
}

struct posted_ops {
  std::vector<op_id> sends, receives;
};

// Posts `ops` operations of `each` bytes, operation i at offset i * each,
// each receive before its send: the order the fake plugin matches by.
posted_ops post_in_order(send_channel& tx, recv_channel& rx,
                         registered_buffers& b, size_t ops, size_t each) {
  posted_ops ids;
  for (size_t i = 0; i < ops; ++i) {
    ids.receives.push_back(
        rx.post_recv(b.sink.data() + i * each, each, b.recv_mr));
    ids.sends.push_back(
        tx.post_send(b.source.data() + i * each, each, b.send_mr));
  }
  return ids;
}

channel_options staged_options(staging_copier_factory copier, int comms,
                               size_t chunk, int slots) {
  channel_options o;
  o.comms = comms;
  o.chunk_bytes = chunk;
  o.staging_slots = slots;
  o.staging_copier = std::move(copier);
  o.peer = "staging-peer";
  return o;
}

// A copier whose copies happen late: start() only records the copy; each
// done() call completes it (performs the memcpy) with probability
// 1/complete_one_in, so
// copies of different slots finish in a random order. A bounce slot holds
// garbage until its copy completes: posting a send too early, or reporting a
// receive before its copy, corrupts the data the test compares.
struct copy_log {
  int started = 0, completed = 0;
  int most_in_flight = 0;
  bool completed_out_of_order = false;
  int fail_start_at = 0; // the n-th start() throws (1-based; 0 = never)
  int fail_done_at = 0;  // the n-th completion throws instead
  unsigned complete_one_in = 3;
};

class late_copier final : public staging_copier {
public:
  late_copier(std::shared_ptr<copy_log> log, unsigned seed)
      : log_(std::move(log)), rng_(seed) {}
  void open(int slots, const void*) override {
    pending_.assign(static_cast<size_t>(slots), {});
  }
  void* allocate_host(size_t bytes) override {
    // Garbage, not zeros: a send posted before its copy would carry it.
    auto* memory = static_cast<char*>(std::malloc(bytes));
    if (!memory)
      throw std::bad_alloc();
    std::memset(memory, 0xee, bytes);
    return memory;
  }
  void free_host(void* memory) noexcept override { std::free(memory); }
  void start(int slot, void* destination, const void* source,
             size_t bytes) override {
    auto& copy = pending_.at(static_cast<size_t>(slot));
    REQUIRE_FALSE(copy.busy); // one copy per slot at a time
    if (++log_->started == log_->fail_start_at)
      throw std::runtime_error(
          "cudaMemcpyAsync failed on GPU 0: injected by the test");
    copy = {true, destination, source, bytes, log_->started};
    int in_flight = 0;
    for (auto& p : pending_)
      in_flight += p.busy;
    log_->most_in_flight = std::max(log_->most_in_flight, in_flight);
  }
  bool done(int slot) override {
    auto& copy = pending_.at(static_cast<size_t>(slot));
    if (!copy.busy)
      return true;
    if (rng_() % log_->complete_one_in != 0)
      return false;
    copy.busy = false;
    if (++log_->completed == log_->fail_done_at)
      throw std::runtime_error(
          "cudaEventQuery failed on GPU 0: injected by the test");
    for (auto& p : pending_)
      if (p.busy && p.order < copy.order)
        log_->completed_out_of_order = true;
    std::memcpy(copy.destination, copy.source, copy.bytes);
    return true;
  }
  void wait_all() noexcept override {}

private:
  struct copy_state {
    bool busy = false;
    void* destination = nullptr;
    const void* source = nullptr;
    size_t bytes = 0;
    int order = 0;
  };
  std::shared_ptr<copy_log> log_;
  std::mt19937 rng_;
  std::vector<copy_state> pending_;
};

staging_copier_factory late(std::shared_ptr<copy_log> log, unsigned seed) {
  return [log, seed] { return std::make_unique<late_copier>(log, seed); };
}
} // namespace

TEST_CASE("CUDA memory on a host-only plugin is staged: many chunks over 3 "
          "comms arrive whole") {
  auto options = staged_options(make_host_staging_copier, 3, 64 << 10, 2);
  auto [tx, rx] = connect_fake(options, options);
  CHECK(tx.stages_cuda());
  CHECK(rx.stages_cuda());
  CHECK(tx.staging_bytes() == 0); // nothing pinned before a staged registration
  long refused = fake_counter("kvferry_fake_refused_mrs");

  const size_t ops = 16, each = (300 << 10) + 7; // 5 chunks each, 80 in all
  auto b = register_buffers(tx, rx, ops * each, 11);
  CHECK(b.send_mr.staged());
  CHECK(b.recv_mr.staged());
  CHECK(b.send_mr.type() == NCCL_PTR_CUDA);
  CHECK(tx.staging_bytes() == 3 * 2 * (64 << 10));
  // Everything is posted at once: far more chunks than the 6 bounce slots.
  post_in_order(tx, rx, b, ops, each);
  auto done = drive(tx, rx, ops, ops);
  REQUIRE(done.sent.size() == ops);
  REQUIRE(done.received.size() == ops);
  for (auto& c : done.sent)
    CHECK(c.ok);
  for (auto& c : done.received) {
    CHECK(c.ok);
    CHECK(c.bytes == each);
  }
  CHECK(b.sink == b.source);
  CHECK(fake_counter("kvferry_fake_refused_mrs") ==
        refused); // never offered CUDA memory
  CHECK(fake_counter("kvferry_fake_max_chunk") <= (64 << 10));
  CHECK(tx.in_flight() == 0);
  CHECK(rx.in_flight() == 0);
}

TEST_CASE("one bounce slot per comm: staged and host operations interleaved "
          "keep posting order") {
  auto log = std::make_shared<copy_log>();
  auto tx_options = staged_options(late(log, 1), 2, 4096, 1);
  auto rx_options = staged_options(late(log, 2), 2, 4096, 1);
  auto [tx, rx] = connect_fake(tx_options, rx_options);

  const size_t ops = 120;
  auto source = pattern(ops * 10000, 5);
  std::vector<char> sink(source.size(), 0);
  // Each side has a staged and a host registration of the same buffer;
  // operation i uses staged memory on the sender when i % 3 != 0 and on the
  // receiver when i % 2 == 0, so every combination occurs.
  auto send_staged =
      tx.register_memory(source.data(), source.size(), NCCL_PTR_CUDA);
  auto send_host =
      tx.register_memory(source.data(), source.size(), NCCL_PTR_HOST);
  auto recv_staged =
      rx.register_memory(sink.data(), sink.size(), NCCL_PTR_CUDA);
  auto recv_host = rx.register_memory(sink.data(), sink.size(), NCCL_PTR_HOST);
  CHECK_FALSE(send_host.staged());
  size_t offset = 0;
  for (size_t i = 0; i < ops; ++i) {
    size_t bytes = 1 + (i * 977) % 9999; // 1 byte .. 3 chunks
    rx.post_recv(sink.data() + offset, bytes,
                 i % 2 == 0 ? recv_staged : recv_host);
    tx.post_send(source.data() + offset, bytes,
                 i % 3 != 0 ? send_staged : send_host);
    offset += bytes;
  }
  auto done = drive(tx, rx, ops, ops);
  REQUIRE(done.sent.size() == ops);
  REQUIRE(done.received.size() == ops);
  for (auto& c : done.received)
    CHECK(c.ok);
  CHECK(std::equal(sink.begin(), sink.begin() + offset, source.begin()));
  CHECK(log->started == log->completed);
  CHECK(log->most_in_flight <=
        2); // 2 comms x 1 slot (each side has its own copier)
}

TEST_CASE("copies that complete late and out of order never expose a bounce "
          "slot early") {
  auto log = std::make_shared<copy_log>();
  auto tx_options = staged_options(late(log, 7), 3, 8192, 4);
  auto rx_options = staged_options(late(log, 8), 3, 8192, 4);
  auto [tx, rx] = connect_fake(tx_options, rx_options);

  const size_t ops = 200, each = 20000; // 3 chunks each
  auto b = register_buffers(tx, rx, ops * each, 9);
  post_in_order(tx, rx, b, ops, each);
  auto done = drive(tx, rx, ops, ops);
  REQUIRE(done.sent.size() == ops);
  REQUIRE(done.received.size() == ops);
  for (auto& c : done.sent)
    CHECK(c.ok);
  for (auto& c : done.received)
    CHECK(c.ok);
  CHECK(b.sink == b.source);
  CHECK(log->completed_out_of_order);
  CHECK(log->most_in_flight > 3);
  CHECK(log->started == 2 * 3 * static_cast<int>(ops));
}

TEST_CASE("a failed device-to-host copy fails its comm, naming the copy and "
          "the peer") {
  auto log = std::make_shared<copy_log>();
  log->fail_start_at =
      3; // operation 2's copy, started once 0 or 1 freed a slot
  log->complete_one_in = 1; // so 0 and 1 are posted before that
  auto tx_options = staged_options(late(log, 3), 1, 4096, 2);
  auto rx_options = staged_options(make_host_staging_copier, 1, 4096, 2);
  auto [tx, rx] = connect_fake(tx_options, rx_options);

  const size_t ops = 6;
  auto b = register_buffers(tx, rx, ops * 4096, 1);
  auto sends = post_in_order(tx, rx, b, ops, 4096).sends;
  // The receiver gets the first two; the other four never come. Operation 1
  // may still have been out when its comm failed: then it fails too.
  auto done = drive(tx, rx, ops, 2);
  REQUIRE(done.sent.size() == ops);
  REQUIRE(done.received.size() == 2);
  for (size_t i = 2; i < ops; ++i)
    CHECK_FALSE(ok_of(done, sends[i]));
  auto error = error_of(done, sends[2]);
  CHECK(error.find("device-to-host copy of a send") != std::string::npos);
  CHECK(error.find("staging-peer") != std::string::npos);
  CHECK(error.find("cudaMemcpyAsync") != std::string::npos);
  CHECK(
      std::equal(b.sink.begin(), b.sink.begin() + 2 * 4096, b.source.begin()));
  CHECK(tx.in_flight() == 0);
  // A later send on the failed comm fails at once instead of waiting.
  auto late_id = tx.post_send(b.source.data(), 4096, b.send_mr);
  auto after = drive(tx, rx, 1, 0);
  REQUIRE(after.sent.size() == 1);
  CHECK(after.sent[0].id == late_id);
  CHECK_FALSE(after.sent[0].ok);
}

TEST_CASE("a copy that fails when polled fails the send's comm too") {
  auto log = std::make_shared<copy_log>();
  log->fail_done_at = 2;
  auto tx_options = staged_options(late(log, 4), 1, 4096, 2);
  auto rx_options = staged_options(make_host_staging_copier, 1, 4096, 2);
  auto [tx, rx] = connect_fake(tx_options, rx_options);
  auto b = register_buffers(tx, rx, 3 * 4096, 2, NCCL_PTR_HOST);
  auto sends = post_in_order(tx, rx, b, 3, 4096).sends;
  // Copies are polled in posting order: the second completion is op 1's.
  auto done = drive(tx, rx, 3, 0);
  REQUIRE(done.sent.size() == 3);
  CHECK_FALSE(ok_of(done, sends[1]));
  CHECK(error_of(done, sends[1]).find("cudaEventQuery") != std::string::npos);
  CHECK_FALSE(ok_of(done, sends[2]));
}

TEST_CASE("a failed host-to-device copy fails that receive only") {
  auto log = std::make_shared<copy_log>();
  log->fail_start_at = 2;
  auto tx_options = staged_options(make_host_staging_copier, 1, 4096, 2);
  auto rx_options = staged_options(late(log, 5), 1, 4096, 2);
  auto [tx, rx] = connect_fake(tx_options, rx_options);

  const size_t ops = 5;
  auto b = register_buffers(tx, rx, ops * 4096, 3);
  auto receives = post_in_order(tx, rx, b, ops, 4096).receives;
  auto done = drive(tx, rx, ops, ops);
  REQUIRE(done.sent.size() == ops);
  REQUIRE(done.received.size() == ops);
  for (auto& c : done.sent)
    CHECK(c.ok);
  for (auto& c : done.received)
    CHECK(c.ok == (c.id != receives[1]));
  auto error = error_of(done, receives[1]);
  CHECK(error.find("host-to-device copy of a receive") != std::string::npos);
  CHECK(error.find("recv channel to staging-peer") != std::string::npos);
  for (size_t i : {0, 2, 3, 4})
    CHECK(std::equal(b.sink.begin() + i * 4096, b.sink.begin() + (i + 1) * 4096,
                     b.source.begin() + i * 4096));
}

TEST_CASE("a failing plugin request fails the staged operations of its comm; "
          "slots are freed") {
  long mrs = fake_counter("kvferry_fake_live_mrs");
  {
    auto options = staged_options(make_host_staging_copier, 1, 4096, 2);
    auto [tx, rx] = connect_fake(options, options);
    auto b = register_buffers(tx, rx, 8 * 4096, 4);
    CHECK(fake_counter("kvferry_fake_live_mrs") ==
          mrs + 4); // 2 sides x 2 bounce slots
    // The 3rd isend from now (operation 2: one comm posts in order) fails.
    fake_counter("kvferry_fake_fail_send_at") =
        fake_counter("kvferry_fake_sends_posted") + 3;
    auto sends = post_in_order(tx, rx, b, 8, 4096).sends;
    auto done = drive(tx, rx, 8, 0);
    fake_counter("kvferry_fake_fail_send_at") = 0;
    REQUIRE(done.sent.size() == 8);
    for (size_t i = 2; i < 8; ++i)
      CHECK_FALSE(ok_of(done, sends[i]));
    auto error = error_of(done, sends[2]);
    CHECK(error.find("plugin fake: test(comm 0 to staging-peer) failed") !=
          std::string::npos);
    CHECK(tx.in_flight() == 0);
    // The receiver still waits for what never came (its own deadline's job).
    CHECK(rx.in_flight() + done.received.size() == 8);
  }
  CHECK(fake_counter("kvferry_fake_live_mrs") == mrs);
}

TEST_CASE("grouped staged receives and sends place each buffer by its tag") {
  auto options = staged_options(make_host_staging_copier, 1, 4096, 4);
  auto [tx, rx] = connect_fake(options, options);
  std::vector<std::vector<char>> sources{pattern(4096, 1), pattern(4096, 2),
                                         pattern(4096, 3)};
  std::vector<std::vector<char>> sinks(3, std::vector<char>(4096, 0));
  std::vector<registration> send_mrs, recv_mrs;
  for (int i = 0; i < 3; ++i) {
    // Buffer 1 is host memory on both sides: a group may mix both kinds.
    int type = i == 1 ? NCCL_PTR_HOST : NCCL_PTR_CUDA;
    send_mrs.push_back(tx.register_memory(sources[i].data(), 4096, type));
    recv_mrs.push_back(rx.register_memory(sinks[i].data(), 4096, type));
  }
  recv_channel::recv_buffer group[3];
  for (int i = 0; i < 3; ++i)
    group[i] = {sinks[i].data(), 4096, 20 + i, &recv_mrs[i]};
  // Sent in another order than the receive lists them, one of them empty.
  send_channel::send_buffer sends[3] = {
      {sources[1].data(), 4096, 21, &send_mrs[1]},
      {sources[2].data(), 0, 22, &send_mrs[2]},
      {sources[0].data(), 100, 20, &send_mrs[0]},
  };
  auto recv_id = rx.post_recv_group(group, 3);
  tx.post_send_group(sends, 3);
  auto done = drive(tx, rx, 1, 1);
  REQUIRE(done.received.size() == 1);
  CHECK(done.received[0].ok);
  CHECK(done.received[0].id == recv_id);
  CHECK(done.received[0].bytes == 4196);
  CHECK(std::equal(sources[0].begin(), sources[0].begin() + 100,
                   sinks[0].begin()));
  CHECK(sinks[1] == sources[1]);
  CHECK(std::all_of(sinks[2].begin(), sinks[2].end(),
                    [](char c) { return c == 0; }));

  // A grouped receive holds one bounce slot per staged buffer at once: 4
  // staged buffers fit 4 slots per comm, not 3.
  std::vector<char> big(4 * 512);
  auto big_mr = rx.register_memory(big.data(), big.size(), NCCL_PTR_CUDA);
  recv_channel::recv_buffer four[4];
  for (int i = 0; i < 4; ++i)
    four[i] = {big.data() + i * 512, 512, i, &big_mr};
  CHECK_NOTHROW(rx.post_recv_group(four, 4));
  channel_options small = options;
  small.staging_slots = 3;
  auto [tx3, rx3] = connect_fake(small, small);
  auto big_mr3 = rx3.register_memory(big.data(), big.size(), NCCL_PTR_CUDA);
  for (auto& b : four)
    b.mr = &big_mr3;
  try {
    rx3.post_recv_group(four, 4);
    FAIL("a group needing more bounce slots than a comm has was accepted");
  } catch (const transport_error& e) {
    CHECK(std::string(e.what()).find("4 staged buffers in one group") !=
          std::string::npos);
  }
}

TEST_CASE("staging_slots 0 refuses CUDA memory on a host-only plugin with a "
          "clear error") {
  auto options = staged_options(make_host_staging_copier, 1, 4096, 0);
  auto [tx, rx] = connect_fake(options, options);
  std::vector<char> buffer(4096);
  try {
    tx.register_memory(buffer.data(), buffer.size(), NCCL_PTR_CUDA);
    FAIL("registered");
  } catch (const transport_error& e) {
    CHECK(std::string(e.what()).find(
              "lacks NCCL_PTR_CUDA and staging is off") != std::string::npos);
  }
  options.staging_slots = max_staging_slots + 1;
  kvferry::test::check_send_channel_refused(fake(), options);
}

TEST_CASE("against kvsock with KVSOCK_PTR_SUPPORT=host: staged transfers over "
          "2 comms") {
  ::setenv("KVSOCK_PTR_SUPPORT", "host",
           1); // read by getProperties and each comm
  auto net =
      plugin::load("kvsock"); // found on KVFERRY_PLUGIN_PATH (set by ctest)
  CHECK_FALSE(net->device(0).supports_cuda());
  auto options = staged_options(make_host_staging_copier, 2, 256 << 10, 2);
  options.peer = "kvsock-loopback";
  auto [tx, rx] = connect_pair(net, options, options);
  const size_t bytes = (3 << 20) + 777;
  auto b = register_buffers(tx, rx, bytes, 6);
  CHECK(b.send_mr.staged());
  for (int round = 0; round < 3; ++round) {
    post_in_order(tx, rx, b, 1, bytes);
    auto done = drive(tx, rx, 1, 1);
    REQUIRE(done.sent.size() == 1);
    REQUIRE(done.received.size() == 1);
    CHECK(done.sent[0].ok);
    CHECK(done.received[0].ok);
    CHECK(done.received[0].bytes == bytes);
    CHECK(b.sink == b.source);
    std::fill(b.sink.begin(), b.sink.end(), 0);
  }
}
