// The caller's memory, registered in place, over several allocations (issue
// #15): a transfer actor's region table (plan.hpp). Two real transfer actors
// over kvsock, each with three regions of the caller's host memory
// (memory_region::wrap), move a scattered extent list; every byte is checked
// against a byte-by-byte reference copy, and extents that cross a region's
// end or name a region that does not exist are refused with
// ec::invalid_extent, writing nothing. The GPU variant is
// tests/gpu/region_table_gpu_test.cpp.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "../support/region_table_pair.hpp"
#include "kvferry/actors/kv_layout.hpp"
#include "why.hpp"

using namespace kvferry;
using kvferry::test::region_table_pair;
using kvferry::test::table_move;

namespace {

struct host_memory {
  static constexpr memory_kind kind = memory_kind::host;
  static constexpr int gpu = -1;
  static void* allocate(std::size_t bytes) {
    auto* p = std::malloc(bytes);
    if (p == nullptr)
      throw std::bad_alloc();
    return p;
  }
  static void release(void* p) { std::free(p); }
  static void write(void* dst, const std::vector<std::uint8_t>& bytes) {
    std::memcpy(dst, bytes.data(), bytes.size());
  }
  static std::vector<std::uint8_t> read(const void* src, std::size_t bytes) {
    const auto* p = static_cast<const std::uint8_t*>(src);
    return {p, p + bytes};
  }
};

using pair = region_table_pair<host_memory>;

bool names(const caf::error& err, const std::string& what) {
  return render(err).find(what) != std::string::npos;
}

} // namespace

TEST_CASE("region table offsets: region i at i << 40, plain offsets for "
          "region 0") {
  CHECK(table_offset(0, 123) == 123);
  CHECK(table_offset(2, 5) == (std::uint64_t{2} << 40) + 5);
  auto at = locate(table_offset(3, 4096));
  CHECK(at.region == 3);
  CHECK(at.offset == 4096);
  // Adjacent in memory order but in different regions: never coalesced.
  auto merged = coalesce({{table_offset(0, 0), table_offset(0, 0), 4096},
                          {table_offset(1, 0), table_offset(0, 4096), 4096}});
  CHECK(merged.size() == 2);
}

TEST_CASE("check_table_extents names the extent and the region it leaves") {
  std::vector<std::uint64_t> sizes{4096, 1000};
  CHECK_FALSE(check_table_extents({{table_offset(1, 0), 0, 1000}},
                                  extent_side::source, sizes));
  auto crossing = check_table_extents(
      {{0, 0, 16}, {table_offset(1, 900), 0, 200}}, extent_side::source, sizes);
  REQUIRE(crossing);
  CHECK(*crossing == "extent #1 (source offset 1099511628676 = region 1 + "
                     "900, length 200) leaves source region 1 of 1000 bytes");
  auto outside = check_table_extents({{0, table_offset(5, 0), 8}},
                                     extent_side::destination, sizes);
  REQUIRE(outside);
  CHECK(outside->find("names region 5, but the destination table has 2 "
                      "regions") != std::string::npos);
  // One region: exactly the transport's check (and its message).
  CHECK(
      check_table_extents({{0, 4000, 200}}, extent_side::destination, {4096}) ==
      check_extents({{0, 4000, 200}}, extent_side::destination, 4096));
}

TEST_CASE("memory_region::wrap refuses what it cannot register, naming the "
          "region") {
  int x = 0;
  CHECK_THROWS_WITH_AS(
      memory_region::wrap(nullptr, 64, memory_kind::host, -1, "kv layer 3"),
      doctest::Contains("memory region 'kv layer 3'"), std::invalid_argument);
  CHECK_THROWS_AS(memory_region::wrap(&x, 0, memory_kind::host, -1, "k"),
                  std::invalid_argument);
  CHECK_THROWS_AS(memory_region::wrap(&x, 4, memory_kind::host, 0, "k"),
                  std::invalid_argument);
  auto r = memory_region::wrap(&x, sizeof x, memory_kind::host, -1, "k");
  CHECK(r->data() == reinterpret_cast<std::uint8_t*>(&x));
  CHECK(r->size() == sizeof x);
  CHECK_FALSE(r->owned());
  CHECK(r->host_accessible());
}

TEST_CASE_FIXTURE(pair, "a scattered plan over three caller regions per side "
                        "lands byte for byte, and again on the same channel") {
  auto ep = receiver_endpoint();
  CHECK(proto::region_sizes_of(ep) == dst_sizes);
  CHECK(ep.region_bytes == dst_sizes[0]);
  auto moves = test::scattered_moves();
  std::uint64_t total = 0;
  for (const auto& m : moves)
    total += m.length;
  auto sent = send(ep, 1, test::virtual_extents(moves));
  REQUIRE_MESSAGE(sent, test::why(sent));
  CHECK(*sent == total);
  auto got = recv(1);
  REQUIRE_MESSAGE(got, test::why(got));
  CHECK(got->bytes == total);
  auto expected = expected_after(moves);
  auto actual = receiver_bytes();
  for (std::size_t r = 0; r < expected.size(); ++r) {
    CAPTURE(r);
    CHECK(actual[r] == expected[r]);
  }
  // A second transfer reuses the channel and its registrations.
  std::vector<table_move> again{{2, 39000, 1, 12288 - 1960, 1960}};
  sent = send(ep, 2, test::virtual_extents(again));
  REQUIRE_MESSAGE(sent, test::why(sent));
  REQUIRE(recv(2));
  auto last = receiver_bytes()[1];
  CHECK(
      std::equal(last.end() - 1960, last.end(), src_bytes[2].begin() + 39000));
}

TEST_CASE_FIXTURE(pair, "the sender refuses an extent that crosses a region's "
                        "end or names a missing region, writing nothing") {
  auto ep = receiver_endpoint();
  // Source: region 1 is 10000 bytes; this extent runs 96 bytes past it.
  auto sent =
      send(ep, 3,
           test::virtual_extents({{0, 0, 0, 0, 512}, {1, 9904, 0, 4096, 192}}));
  REQUIRE_FALSE(sent);
  INFO(render(sent.error()));
  CHECK(is(sent.error(), ec::invalid_extent));
  CHECK(names(sent.error(), "send order 3 to 'decode-0'"));
  CHECK(names(sent.error(), "extent #1"));
  CHECK(names(sent.error(), "leaves source region 1 of 10000 bytes"));
  // Destination: the receiver has three regions, not six.
  sent = send(ep, 4, test::virtual_extents({{0, 0, 5, 0, 512}}));
  REQUIRE_FALSE(sent);
  CHECK(is(sent.error(), ec::invalid_extent));
  CHECK(names(sent.error(), "names region 5, but the destination table has 3 "
                            "regions"));
  CHECK(receiver_bytes() == dst_before);
}

TEST_CASE_FIXTURE(pair, "the receiver refuses an announcement whose extent "
                        "crosses the end of its region, writing nothing") {
  // The sender believes (or claims) the receiver's region 1 is larger.
  auto ep = receiver_endpoint();
  ep.more_region_sizes[0] = 65536; // region 1
  (void)send(
      ep, 5,
      test::virtual_extents({{0, 0, 1, 0, 1024}, {2, 0, 1, 12000, 1024}}));
  auto got = recv(5);
  REQUIRE_FALSE(got);
  INFO(render(got.error()));
  CHECK(is(got.error(), ec::invalid_extent));
  CHECK(names(got.error(), "transfer 5 from 'prefill-0'"));
  CHECK(names(got.error(), "leaves destination region 1 of 12288 bytes"));
  CHECK(receiver_bytes() == dst_before);
}

// ---- a KV cache in the caller's memory, planned with kv_layout

namespace {

constexpr std::uint32_t kv_layers = 3;
constexpr std::uint64_t kv_blocks = 16;
constexpr std::uint64_t kv_half_bytes = 1536;

const kv_layout& prefill_layout() { // vLLM: one [2, blocks, ...] per layer
  static const auto l =
      kv_layout::vllm_per_layer(kv_layers, kv_blocks, kv_half_bytes);
  return l;
}
const kv_layout& decode_layout() { // one allocation, block-major
  static const auto l =
      kv_layout::block_major(kv_layers, kv_blocks, kv_half_bytes);
  return l;
}

struct kv_pair : region_table_pair<host_memory> {
  kv_pair()
      : region_table_pair(
            std::vector<std::uint64_t>(prefill_layout().region_count(),
                                       prefill_layout().region_bytes()),
            std::vector<std::uint64_t>(decode_layout().region_count(),
                                       decode_layout().region_bytes())) {}
};

} // namespace

TEST_CASE_FIXTURE(kv_pair, "a request's KV blocks move from a vLLM per-layer "
                           "cache to a block-major one, all layers at once and "
                           "layer by layer") {
  auto ep = receiver_endpoint();
  struct request {
    std::vector<std::uint64_t> src, dst;
  };
  const std::vector<request> requests{{{3, 4, 5, 11, 0}, {8, 9, 10, 2, 15}},
                                      {{6, 7, 12}, {0, 1, 3}}};
  // Request 0 in one send of all layers; request 1 layer by layer, as a
  // prefill that streams each layer when it is written.
  std::vector<std::vector<extent>> sends{plan_kv(
      prefill_layout(), requests[0].src, decode_layout(), requests[0].dst)};
  for (std::uint32_t l = 0; l < kv_layers; ++l)
    sends.push_back(plan_kv(prefill_layout(), requests[1].src, decode_layout(),
                            requests[1].dst, l));
  for (std::size_t k = 0; k < sends.size(); ++k) {
    auto sent = send(ep, 10 + k, sends[k]);
    REQUIRE_MESSAGE(sent, test::why(sent));
    auto got = recv(10 + k);
    REQUIRE_MESSAGE(got, test::why(got));
    CHECK(got->bytes == total_bytes(sends[k]));
  }
  // The reference: each block half copied byte by byte to where the
  // destination layout keeps it.
  auto want = dst_before;
  for (const auto& r : requests)
    for (std::uint32_t l = 0; l < kv_layers; ++l)
      for (auto h : {kv_half::k, kv_half::v})
        for (std::size_t i = 0; i < r.src.size(); ++i) {
          auto s = prefill_layout().locate(l, h, r.src[i]);
          auto d = decode_layout().locate(l, h, r.dst[i]);
          std::copy_n(src_bytes[s.region].begin() +
                          static_cast<std::ptrdiff_t>(s.offset),
                      kv_half_bytes,
                      want[d.region].begin() +
                          static_cast<std::ptrdiff_t>(d.offset));
        }
  CHECK(receiver_bytes() == want);
}
